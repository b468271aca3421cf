"""Tiny random Hugging Face models saved to a folder, so loaders can be tested offline by path."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = "a an the one two three red green blue cube sphere cone on left right of above below next to small".split()


def tiny_tokenizer(folder: Path, *, specials: dict[str, str], template: str, extra_special=(), words=WORDS):
    """A word-level tokenizer (special tokens first, then `words`) saved with `save_pretrained`.

    `specials` maps roles (pad_token, eos_token, bos_token, unk_token, ...) to token strings; `template` is the
    single-sequence template of `tokenizers.processors.TemplateProcessing`, e.g. "$A </s>"; `extra_special` are
    further special tokens matched before word splitting (e.g. "<image>", chat headers)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*specials.values(), *extra_special, *words]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special_in_template = [t for t in template.split() if t != "$A"]
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in special_in_template]
    )
    extra = {"extra_special_tokens": list(extra_special)} if extra_special else {}
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **specials, **extra)
    wrapped.save_pretrained(folder)
    return wrapped


def tiny_t5(folder: Path, *, encoder_only: bool = True) -> Path:
    """A tiny T5: `T5EncoderModel`, or a full encoder-decoder checkpoint as flan-T5 ships."""
    from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration

    specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    tok = tiny_tokenizer(folder, specials=specials, template="$A </s>")
    config = T5Config(
        vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    (T5EncoderModel if encoder_only else T5ForConditionalGeneration)(config).save_pretrained(folder)
    return folder


def tiny_clip(folder: Path, *, kind: str) -> Path:
    """A tiny CLIP text model; `kind` is "text" (CLIPTextModel), "projection" (CLIPTextModelWithProjection) or
    "full" (a CLIPModel checkpoint with a vision tower)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    specials = {"pad_token": "<pad>", "unk_token": "<unk>"}
    specials |= {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    tok = tiny_tokenizer(folder, specials=specials, template="<|startoftext|> $A <|endoftext|>")
    text = dict(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=32, projection_dim=8, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    if kind == "full":
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
        vision |= dict(image_size=32, patch_size=16)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    else:
        model = {"text": CLIPTextModel, "projection": CLIPTextModelWithProjection}[kind](CLIPTextConfig(**text))
    model.save_pretrained(folder)
    return folder


def tiny_vae(folder: Path, *, scaling_factor: float = 0.25) -> Path:
    """AutoencoderKL with factor 2 (two blocks), 4 latent channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32,
        scaling_factor=scaling_factor,
    )  # fmt: skip
    vae.save_pretrained(folder, safe_serialization=True)
    return folder


LLAMA3_CHAT = (  # the llama-3 chat layout of llava-hf/llama3-llava-next-8b-hf, on the tiny vocabulary
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHAT_WORDS = (*WORDS, *"describe this image consider all objects picture them their position and relation . , user "
              "assistant shows there is".split())


def _tiny_llama_config(tok, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **kw,
    )  # fmt: skip


def _chat_tokenizer(folder: Path, extra=()):
    specials = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    return tiny_tokenizer(folder, specials=specials, template="$A", words=CHAT_WORDS,
                          extra_special=("<|start_header_id|>", "<|end_header_id|>", *extra))  # fmt: skip


def tiny_llava_next(folder: Path, *, crop: int = 28, patch: int = 14) -> Path:
    """A tiny random LLaVA-NeXT (CLIP vision tower, llama LM, anyres pinpoints of 1x2, 2x1 and 2x2 crops) with its
    processor (PIL image processor, llama-3 chat template), as `llava-hf/llama3-llava-next-8b-hf` is laid out."""
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = _chat_tokenizer(folder, extra=("<image>",))
    pins = [[crop, 2 * crop], [2 * crop, crop], [2 * crop, 2 * crop]]
    images = LlavaNextImageProcessorPil(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop},
                                       image_grid_pinpoints=pins)  # fmt: skip
    LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=patch, num_additional_image_tokens=1,
                       vision_feature_select_strategy="default", chat_template=LLAMA3_CHAT).save_pretrained(folder)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=crop, patch_size=patch)  # fmt: skip
    config = LlavaNextConfig(vision_config=vision, text_config=_tiny_llama_config(tok), image_grid_pinpoints=pins,
                             image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                             vision_feature_select_strategy="default")  # fmt: skip
    torch.manual_seed(0)
    LlavaNextForConditionalGeneration(config).save_pretrained(folder)
    return folder


def tiny_causal_lm(folder: Path) -> Path:
    """A tiny random llama `AutoModelForCausalLM` with a llama-3 chat template (for the prompt extender)."""
    from transformers import LlamaForCausalLM

    tok = _chat_tokenizer(folder)
    tok.chat_template = LLAMA3_CHAT.replace("<image>\n", "")  # text only
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(_tiny_llama_config(tok)).save_pretrained(folder)
    return folder


def tiny_mask2former(folder: Path, names=("person", "cat", "mouse", "tv")) -> Path:
    """A tiny random Mask2Former instance-segmentation model + PIL image processor (the GenEval detector)."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1] * 4, num_heads=[1] * 4, window_size=2,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=64,
                               num_queries=6, encoder_feedforward_dim=32, common_stride=4,
                               id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    Mask2FormerImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def tiny_vilt(folder: Path) -> Path:
    """A tiny random ViLT visual-question-answering model answering yes / no (the DPG answerer)."""
    from transformers import BertTokenizerFast, ViltConfig, ViltForQuestionAnswering, ViltProcessor
    from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "is", "there", "?"]
    (folder / "vocab.txt").write_text("\n".join(vocab))
    processor = ViltProcessor(image_processor=ViltImageProcessorPil(size={"shortest_edge": 32}, size_divisor=16),
                              tokenizer=BertTokenizerFast(vocab_file=str(folder / "vocab.txt")))
    config = ViltConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, image_size=32, patch_size=16, max_position_embeddings=40,
                        id2label={0: "yes", 1: "no"}, label2id={"yes": 0, "no": 1})
    torch.manual_seed(0)
    ViltForQuestionAnswering(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
