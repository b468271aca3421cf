import numpy as np
import torch

from microt2i.config import DataConfig
from microt2i.data.sampler import ResumableSampler
from microt2i.data.store import Store, cache_key, load_store, save_store
from microt2i.world.pixels import images_to_tensor, tensor_to_images


def test_sampler_is_a_permutation_per_epoch_and_resumable():
    s = ResumableSampler(10, seed=3)
    first = s.indices(0, 10)
    assert sorted(first) == list(range(10))
    assert not np.array_equal(first, np.arange(10))
    # any window equals the same window of the whole stream: resume needs no replay
    stream = s.indices(0, 35)
    assert np.array_equal(ResumableSampler(10, seed=3).indices(17, 11), stream[17:28])
    assert not np.array_equal(s.indices(10, 10), first)  # a new permutation each epoch
    # ranks split the global batch into contiguous slices
    both = np.concatenate([s.rank_indices(4, 8, r, 2) for r in range(2)])
    assert np.array_equal(both, s.indices(4, 8))


def test_cache_key_tracks_every_setting_but_the_cache_dir():
    a = DataConfig()
    assert cache_key(a) == cache_key(DataConfig(cache_dir="/elsewhere"))
    for change in ({"resolution": 64}, {"captions": "aio"}, {"codec": "x"}, {"text_len": 32}, {"seed": 1}):
        assert cache_key(DataConfig(**change)) != cache_key(a)


def test_store_round_trip_and_image_conversion(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    x = images_to_tensor(imgs)
    assert x.min() >= -1 and x.max() <= 1 and x.shape == (3, 3, 8, 8)
    assert np.array_equal(tensor_to_images(x), imgs)
    st = Store(x, torch.randn(3, 5, 4).half(), torch.tensor([[1, 1, 0, 0, 0]] * 3).bool(), ["a", "b", "c"],
               {"k": 1}, torch.randn(1, 5, 4).half(), torch.tensor([[1, 0, 0, 0, 0]]).bool())
    save_store(st, tmp_path / "s")
    back = load_store(tmp_path / "s")
    assert torch.equal(back.latents, st.latents) and torch.equal(back.text_mask, st.text_mask)
    assert back.captions == st.captions and back.meta == {"k": 1}
    tok, mask = back.null_text("zero")
    assert tok.abs().sum() == 0 and mask.tolist() == [[True, False, False, False, False]]
    tok, mask = back.null_text("empty")
    assert torch.equal(tok, st.empty_tokens.float()) and torch.equal(mask, st.empty_mask)
    b = back.batch([2, 0])
    assert torch.equal(b["x0"], x[[2, 0]]) and b["text_tokens"].dtype == torch.float32
