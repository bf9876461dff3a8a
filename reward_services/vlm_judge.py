"""VLM semantic judge: calibrated P(yes) from a Qwen2-VL / Qwen2.5-VL model (report §5.1, item 1).

For each video, prompt and dimension the judge asks a yes/no question about the video and reads
the logits of the FIRST answer token. The logits of every single-token spelling of "yes"
("yes", "Yes", " yes", ...) are pooled with logsumexp, likewise for "no", and the score is

    P(yes) = sigmoid((lse_yes - lse_no - prior_log_odds) / calibration_temperature)

which is the softmax over the two pooled logits when the corrections are off. Reading the
probability instead of the sampled answer is what gives the generator a dense reward (report
§5.1: "extracting calibrated probabilities from these large models").

Two calibrations, both optional:
- temperature: `calibration_temperature` T > 1 flattens over-confident judges (T is fitted offline
  on labelled pairs, e.g. by minimising NLL; T -> infinity gives 0.5 for every input);
- contextual calibration (`prior_correction=True`, Zhao et al. 2021 "Calibrate Before Use"): the
  judge first asks each dimension's question about a content-free input -- a uniform mid-grey
  video of the same size and the prompt "N/A" -- and subtracts the log-odds it gives there, so a
  model that says "yes" to everything no longer scores every video high. The prior is computed
  once per (dimension, video shape) and cached; the content-free input itself then scores 0.5.

Backends (the same questions, token sets and calibration in both):
- "transformers": `AutoModelForImageTextToText` + `AutoProcessor` loaded from `model_path` (local
  directory or hub id), or a `model` plus `processor` / `tokenizer` built by the caller. Without
  a processor, `prepare_inputs` builds the model inputs itself (see there); this is how the tiny
  random model of the tests and the toy world runs on a CPU.
- "vllm": `vllm.LLM` with the video passed as `multi_modal_data` and `SamplingParams(max_tokens=1,
  logprobs=k)`. vLLM returns only the top-k log-probabilities, so a yes/no spelling outside the
  top k is given the k-th log-probability (an upper bound on its true value); raise
  `vllm_logprobs` if a judge often ranks both answers low. vLLM is imported only here.

Limits: one video per question; `first_frames` (image-to-video conditioning) is ignored; the
action / object-count questions are derived from the prompt by a small word-list heuristic (see
`build_question`) that understands prompts shaped like "<count> <adjectives> <noun> <verb> ..."
and falls back to a whole-prompt question otherwise.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from reward_services.base import Critic, CriticOutput

# ----------------------------------------------------------------------------------------------
# Questions
# ----------------------------------------------------------------------------------------------

QUESTION_TEMPLATES: dict[str, str] = {
    "text_alignment": "Does this video show {prompt}? Answer yes or no.",
    "object_count": "Does this video show exactly {count} {objects}? Answer yes or no.",
    "action": "In this video, {aux} {subject} {action}? Answer yes or no.",
}
# Used when the prompt does not parse as "<count> <noun phrase> <verb> ..." (see build_question).
FALLBACK_TEMPLATES: dict[str, str] = {
    "object_count": 'Does this video show the number of objects described by "{prompt}"? Answer yes or no.',
    "action": 'Does the motion in this video match "{prompt}"? Answer yes or no.',
}
DIMENSIONS: tuple[str, ...] = tuple(QUESTION_TEMPLATES)

_COUNT_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip
_NUMBER_NAMES = {n: w for w, n in _COUNT_WORDS.items() if w not in ("a", "an")}
_PREPOSITIONS = {
    "on", "in", "at", "with", "over", "under", "across", "through", "into", "onto", "from", "to",
    "near", "beside", "behind", "above", "below", "along", "around", "toward", "towards", "past",
    "against", "while", "and", "as", "of", "inside", "between",
}  # fmt: skip
_AUX = {"is", "are"}
# Verb stems (base form); a prompt word is a verb if it is a stem, stem+"s"/"es", "ies" for "y".
_VERB_STEMS = {
    "move", "rotate", "spin", "flow", "pan", "fall", "jump", "run", "walk", "fly", "bounce", "roll",
    "slide", "grow", "shrink", "drift", "swim", "turn", "zoom", "rise", "sink", "spread", "swirl",
    "float", "dance", "drive", "ride", "sit", "stand", "eat", "play", "chase", "cross", "travel",
    "orbit", "expand", "shake", "pour", "splash", "melt", "burn", "explode", "open", "close",
    "climb", "fade", "flash", "glide", "hop", "kick", "lift", "push", "pull", "throw", "catch",
    "follow", "leave", "enter", "approach", "go", "come", "tilt", "sway", "blink", "wobble",
    "stay", "hover", "appear", "disappear", "change", "shine", "swing", "vibrate", "zigzag",
}  # fmt: skip


def _verb_base(word: str) -> str | None:
    """The base form of `word` if it is a known verb in base or third-person form, else None."""
    w = word.lower()
    if w in _VERB_STEMS:
        return w
    if w.endswith("ies") and w[:-3] + "y" in _VERB_STEMS:
        return w[:-3] + "y"
    if w.endswith("es") and w[:-2] in _VERB_STEMS:  # pushes, goes, crosses
        return w[:-2]
    if w.endswith("s") and w[:-1] in _VERB_STEMS:
        return w[:-1]
    return None


def _is_verb(word: str) -> bool:
    return word.lower() in _AUX or _verb_base(word) is not None or (len(word) > 4 and word.endswith("ing"))


@dataclass(frozen=True)
class PromptParts:
    """A prompt split as "<subject> <action> <context>": "a red square | moves left | on a blue background"."""

    subject: str
    count: int | None  # from the subject's first word: "a"/"one" -> 1, "two"/"2" -> 2; None for "the"
    objects: str  # the subject without its count word: "red square"
    verb: str  # the verb as written ("moves", "is", "running")
    action: str  # the verb phrase up to the first preposition after it: "moves left"


def parse_prompt(prompt: str) -> PromptParts | None:
    """Split a prompt into subject and action, or None if it has no recognised verb after a subject.

    The subject is every word before the first verb (a word-list verb, "is"/"are", or an -ing
    word); the action runs from the verb up to the first preposition that follows at least one
    non-preposition word ("moves left on a blue background" -> "moves left", "runs across the
    field" -> "runs across the field"; "is"/"are" plus the next word count as the verb).
    """
    words = re.sub(r"[.!?]+$", "", prompt.strip()).split()
    verb_at = next((i for i, w in enumerate(words) if i > 0 and _is_verb(w)), None)
    if verb_at is None:
        return None
    subject_words = words[:verb_at]
    first = subject_words[0].lower()
    count = int(first) if first.isdigit() else _COUNT_WORDS.get(first)
    objects = " ".join(subject_words[1:] if count is not None else subject_words)
    end, seen_content = len(words), False
    after_verb = verb_at + (2 if words[verb_at].lower() in _AUX else 1)  # "is running" is one verb
    for i in range(min(after_verb, len(words)), len(words)):
        is_prep = words[i].lower() in _PREPOSITIONS
        if is_prep and seen_content:
            end = i
            break
        seen_content = seen_content or not is_prep
    return PromptParts(
        subject=" ".join(subject_words),
        count=count,
        objects=objects,
        verb=words[verb_at],
        action=" ".join(words[verb_at:end]),
    )


def build_question(prompt: str, dimension: str) -> str:
    """The yes/no question the judge asks for one prompt and one dimension.

    - text_alignment: "Does this video show {prompt}? Answer yes or no."
    - object_count: the count word and noun phrase of the prompt's subject, "a red square moves
      left" -> "Does this video show exactly one red square?"; prompts whose subject starts with no
      count word ("the camera pans") fall back to a whole-prompt question.
    - action: the subject and verb phrase recast as a question, "a red square moves left on a
      blue background" -> "In this video, does a red square move left?"; "a dog is running" ->
      "In this video, is a dog running?"; prompts without a recognised verb fall back.
    """
    if dimension not in QUESTION_TEMPLATES:
        raise ValueError(f"unknown VLM judge dimension {dimension!r}; available: {list(DIMENSIONS)}")
    prompt = re.sub(r"[.!?]+$", "", prompt.strip())
    template = QUESTION_TEMPLATES[dimension]
    if dimension == "text_alignment":
        return template.format(prompt=prompt)
    parts = parse_prompt(prompt)
    if dimension == "object_count":
        if parts is None or parts.count is None or not parts.objects:
            return FALLBACK_TEMPLATES[dimension].format(prompt=prompt)
        count = _NUMBER_NAMES.get(parts.count, str(parts.count))
        return template.format(count=count, objects=parts.objects)
    # action
    if parts is None:
        return FALLBACK_TEMPLATES[dimension].format(prompt=prompt)
    plural = parts.count is not None and parts.count > 1
    rest = parts.action.split()[1:]
    if parts.verb.lower() in _AUX:  # "a dog is running" -> "is a dog running"
        aux, action = parts.verb.lower(), " ".join(rest)
    elif parts.verb.endswith("ing") and _verb_base(parts.verb) is None:  # "a dog running"
        aux, action = ("are" if plural else "is"), parts.action
    else:  # "a square moves left" -> "does a square move left"
        aux, action = ("do" if plural else "does"), " ".join([_verb_base(parts.verb) or parts.verb, *rest])
    return template.format(aux=aux, subject=parts.subject, action=action).replace("  ", " ")


# ----------------------------------------------------------------------------------------------
# Frames and model inputs
# ----------------------------------------------------------------------------------------------

# Qwen2-VL / Qwen2.5-VL normalise pixels with the OpenAI CLIP statistics.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
VIDEO_PAD = "<|video_pad|>"
# The Qwen2-VL / Qwen2.5-VL chat template rendered for one user turn holding a video and a question.
QWEN_CHAT_FORMAT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{video}{question}<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def resample_frames(videos: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Pick `num_frames` frames spread uniformly over [B, T, H, W, 3] (first and last included)."""
    index = torch.linspace(0, videos.shape[1] - 1, num_frames).round().long()
    return videos[:, index]


def fit_frame_size(height: int, width: int, factor: int, max_pixels: int) -> tuple[int, int]:
    """Nearest size with both sides multiples of `factor` (at least `factor`), area <= max_pixels."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    return h, w


def resize_frames(videos: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of [B, T, H, W, 3] frames; identity when the size matches."""
    b, t, h, w, c = videos.shape
    if (h, w) == (height, width):
        return videos
    x = videos.reshape(b * t, h, w, c).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).permute(0, 2, 3, 1).reshape(b, t, height, width, c)


def patchify_videos(
    videos: torch.Tensor, patch_size: int, temporal_patch_size: int, merge_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten CLIP-normalised videos into the patch rows Qwen2-VL's vision tower reads.

    videos: [B, T, H, W, 3] in [0, 1] with T % temporal_patch_size == 0 and H, W multiples of
    patch_size * merge_size. Returns (pixel_values_videos [B * t * h * w, 3 * tp * p * p],
    video_grid_thw [B, 3]) where (t, h, w) = (T / tp, H / p, W / p). Rows are ordered
    (t, h-block, w-block, h-in-block, w-in-block) so each merge_size x merge_size group of patches
    is contiguous (the PatchMerger concatenates consecutive rows); each row is channels first,
    then time, then patch rows and columns -- the layout of `PatchEmbed.view(-1, C, tp, p, p)` and
    of `Qwen2VLVideoProcessor.patchify`.
    """
    b, frames, height, width, channels = videos.shape
    mean = videos.new_tensor(CLIP_MEAN)
    std = videos.new_tensor(CLIP_STD)
    x = ((videos - mean) / std).permute(0, 1, 4, 2, 3)  # [B, T, C, H, W]
    p, tp, m = patch_size, temporal_patch_size, merge_size
    t, h, w = frames // tp, height // p, width // p
    x = x.reshape(b, t, tp, channels, h // m, m, p, w // m, m, p)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)  # [B, t, h/m, w/m, m, m, C, tp, p, p]
    pixel_values = x.reshape(b * t * h * w, channels * tp * p * p)
    grid_thw = torch.tensor([[t, h, w]] * b, dtype=torch.long)
    return pixel_values, grid_thw


def chat_text(question: str, video: str = VIDEO_PLACEHOLDER, processor: Any = None) -> str:
    """One user turn (video then question) plus the assistant header the answer token follows."""
    if processor is not None and getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return QWEN_CHAT_FORMAT.format(video=video, question=question)


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, length - len(row) :] = 1
    return ids, mask


def prepare_inputs(
    videos: torch.Tensor,
    questions: Sequence[str],
    *,
    config: Any,
    processor: Any = None,
    tokenizer: Any = None,
) -> dict[str, torch.Tensor]:
    """Model inputs for one video + one question per row, left-padded so the last column is the
    position whose logits predict the first answer token.

    videos: [B, T, H, W, 3] floats in [0, 1], already resampled to an even T and resized to
    multiples of patch_size * spatial_merge_size (`VLMJudge` does both).

    With a `processor` (real checkpoints) the video goes in as uint8 frames and the processor
    does the rest (resizing to its own pixel budget, patches, placeholder expansion, M-RoPE
    token types). Without one (the tiny random model), the inputs are built here from `config`
    (a Qwen2VLConfig / Qwen2_5_VLConfig) and a `tokenizer` whose "<|video_pad|>" id equals
    `config.video_token_id`:
      - pixel_values_videos, video_grid_thw: `patchify_videos` with the vision config's sizes;
      - input_ids: the chat text with "<|video_pad|>" repeated t*h*w / merge_size**2 times (one
        token per merged 2x2 patch group), left-padded with the tokenizer's pad id;
      - attention_mask: 1 on real tokens, 0 on padding;
      - mm_token_type_ids: 0 text, 1 image, 2 video token. transformers 5.x computes the 3-D
        M-RoPE positions from these (`get_rope_index` groups runs of equal type) and refuses
        video inputs without them; processors return them, so only this path must build them.
    """
    if processor is not None:
        texts = [chat_text(q, processor=processor) for q in questions]
        frames = [(v * 255).round().to(torch.uint8).numpy() for v in videos.cpu()]
        batch = processor(text=texts, videos=frames, padding=True, return_tensors="pt")
        return dict(batch)
    if tokenizer is None:
        raise ValueError("prepare_inputs needs a processor or a tokenizer; got neither")
    vision = config.vision_config
    merge = vision.spatial_merge_size
    pixel_values, grid_thw = patchify_videos(videos, vision.patch_size, vision.temporal_patch_size, merge)
    num_video_tokens = int(grid_thw[0].prod()) // merge**2
    video_text = VIDEO_PLACEHOLDER.replace(VIDEO_PAD, VIDEO_PAD * num_video_tokens)
    rows = [tokenizer(chat_text(q, video=video_text), add_special_tokens=False)["input_ids"] for q in questions]
    found = sum(tok == config.video_token_id for tok in rows[0])
    if found != num_video_tokens:
        raise ValueError(
            f"tokenizer maps {VIDEO_PAD!r} to id {tokenizer.convert_tokens_to_ids(VIDEO_PAD)} but "
            f"config.video_token_id is {config.video_token_id}; the tokenizer does not match the model"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, attention_mask = _left_pad(rows, pad_id)
    mm_token_type_ids = torch.zeros_like(input_ids)
    mm_token_type_ids[input_ids == config.image_token_id] = 1
    mm_token_type_ids[input_ids == config.video_token_id] = 2
    mm_token_type_ids[attention_mask == 0] = 0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": mm_token_type_ids,
        "pixel_values_videos": pixel_values,
        "video_grid_thw": grid_thw,
    }


# ----------------------------------------------------------------------------------------------
# Tiny model for tests and the toy world
# ----------------------------------------------------------------------------------------------

TINY_MODEL_PATH = "builtin:tiny-qwen2vl"
_TINY_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip


class TinyVLM(NamedTuple):
    model: Any  # Qwen2VLForConditionalGeneration
    tokenizer: Any  # transformers fast tokenizer


def tiny_tokenizer():
    """A byte-level BPE tokenizer built offline: every string encodes losslessly to byte tokens,
    "yes"/"Yes"/"no"/"No" (bare and with a leading space) are single tokens as in Qwen's real
    vocabulary, and Qwen's chat and vision markers are special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = []
    for word in ("yes", "Yes", "no", "No"):
        merged = word[0]
        for ch in word[1:]:
            merges.append((merged, ch))
            merged += ch
            vocab.setdefault(merged, len(vocab))
        merges.append(("Ġ", word))  # "Ġ" is byte-level BPE's leading space
        vocab.setdefault("Ġ" + word, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(_TINY_SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|im_end|>")


def tiny_qwen2vl(seed: int = 0) -> TinyVLM:
    """A randomly initialised Qwen2-VL (hidden 32, 2 text layers, 1 vision block, 4-pixel patches,
    so a 32x32 frame is 8x8 patches -> 16 merged tokens per 2 frames) and its tokenizer."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tokenizer = tiny_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in _TINY_SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=1024,
            # head_dim 16 -> 8 rotary frequencies split over (time, height, width)
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            # 10x the usual 0.02 so a random judge's P(yes) visibly depends on video and question
            initializer_range=0.2,
        ),
        vision_config=dict(
            depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2,
            patch_size=4, spatial_merge_size=2, temporal_patch_size=2, initializer_range=0.2,
        ),  # fmt: skip
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    fork_devices: list = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config)
    return TinyVLM(model.eval(), tokenizer)


# ----------------------------------------------------------------------------------------------
# Backends: (frames, questions) -> (lse_yes, lse_no)
# ----------------------------------------------------------------------------------------------

YES_SPELLINGS = ("yes", "Yes", " yes", " Yes", "YES")
NO_SPELLINGS = ("no", "No", " no", " No", "NO")


def single_token_ids(tokenizer: Any, spellings: Sequence[str]) -> list[int]:
    """Ids of the spellings the tokenizer encodes as exactly one token (duplicates removed)."""
    ids: list[int] = []
    for text in spellings:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(int(encoded[0]))
    return ids


class _TransformersBackend:
    """Runs the judge with a transformers Qwen2-VL / Qwen2.5-VL model (CPU or GPU)."""

    def __init__(self, model, processor, tokenizer, model_path, device, dtype, seed):
        if model is None:
            if not model_path:
                raise ValueError("backend='transformers' needs model_path (checkpoint dir or hub id) or a built model")
            if model_path == TINY_MODEL_PATH:
                model, tokenizer = tiny_qwen2vl(seed)
            else:
                from transformers import AutoModelForImageTextToText, AutoProcessor

                model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=_torch_dtype(dtype))
                processor = processor or AutoProcessor.from_pretrained(model_path)
        if processor is not None:
            tokenizer = processor.tokenizer
            tokenizer.padding_side = "left"  # the last column must be every row's last real token
        if tokenizer is None:
            raise ValueError("backend='transformers' with a prebuilt model needs `processor` or `tokenizer`")
        self.model = model.to(device).eval()
        self.processor, self.tokenizer, self.device = processor, tokenizer, torch.device(device)
        vision = model.config.vision_config
        # A processor resizes to its checkpoint's pixel budget itself; without one, sides must be
        # whole merged patches.
        self.frame_factor = 1 if processor is not None else vision.patch_size * vision.spatial_merge_size

    @torch.no_grad()
    def next_token_logits(self, videos: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        """Logits [B, vocab] of the first answer token."""
        inputs = prepare_inputs(
            videos, questions, config=self.model.config, processor=self.processor, tokenizer=self.tokenizer
        )
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        out = self.model(**inputs, use_cache=False, logits_to_keep=1)
        return out.logits[:, -1, :].float().cpu()

    def yes_no_scores(self, videos, questions, yes_ids, no_ids) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.next_token_logits(videos, questions)
        return logits[:, yes_ids].logsumexp(-1), logits[:, no_ids].logsumexp(-1)

    def sleep(self) -> None:
        self.model.to("cpu")

    def wake_up(self) -> None:
        self.model.to(self.device)


class _VLLMBackend:
    """Runs the judge with vLLM (GPU); only the top-k log-probabilities of the answer token are read."""

    def __init__(self, model_path, logprobs, options):
        try:
            import vllm
        except ImportError as err:
            raise ImportError(
                "VLMJudge(backend='vllm') needs vLLM, which is not installed; install the gpu extra "
                "(pip install 'teleboost[gpu]') or use backend='transformers'"
            ) from err
        if model_path is None or model_path == TINY_MODEL_PATH:
            raise ValueError(f"backend='vllm' needs model_path to name a checkpoint, got {model_path!r}")
        self.llm = vllm.LLM(model=model_path, limit_mm_per_prompt={"video": 1}, **(options or {}))
        self.tokenizer = self.llm.get_tokenizer()
        self.sampling = vllm.SamplingParams(max_tokens=1, logprobs=logprobs, temperature=0.0)
        self.frame_factor = 1  # vLLM runs the checkpoint's HF processor, which resizes itself

    def yes_no_scores(self, videos, questions, yes_ids, no_ids) -> tuple[torch.Tensor, torch.Tensor]:
        requests = [
            {
                "prompt": chat_text(q),
                "multi_modal_data": {"video": (v * 255).round().to(torch.uint8).numpy()},
            }
            for v, q in zip(videos.cpu(), questions)
        ]
        outputs = self.llm.generate(requests, self.sampling, use_tqdm=False)
        lse_yes, lse_no = [], []
        for out in outputs:
            top = {int(tok): float(lp.logprob) for tok, lp in out.outputs[0].logprobs[0].items()}
            floor = min(top.values())  # tokens outside the top k are at most this likely
            lse_yes.append(torch.tensor([top.get(t, floor) for t in yes_ids]).logsumexp(0))
            lse_no.append(torch.tensor([top.get(t, floor) for t in no_ids]).logsumexp(0))
        return torch.stack(lse_yes), torch.stack(lse_no)

    def sleep(self) -> None:
        self.llm.sleep(level=1)

    def wake_up(self) -> None:
        self.llm.wake_up()


def _torch_dtype(dtype: str | torch.dtype | None):
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    return getattr(torch, dtype)


# ----------------------------------------------------------------------------------------------
# The critic
# ----------------------------------------------------------------------------------------------


class VLMJudge(Critic):
    """Calibrated P(yes) per video for each requested question dimension (scores named by dimension).

    Args:
        dimensions: which questions to ask, from DIMENSIONS ("text_alignment", "object_count",
            "action"); each becomes one score.
        backend: "transformers" (CPU or GPU) or "vllm" (GPU, needs the `gpu` extra).
        model_path: local checkpoint directory or hub id of a Qwen2-VL / Qwen2.5-VL model;
            "builtin:tiny-qwen2vl" (the default, for the toy world and tests) builds the tiny random
            model of `tiny_qwen2vl(seed)`.
        model, processor, tokenizer: an already-built model with its processor (or, for models
            fed without a processor, its tokenizer); overrides `model_path`. transformers only.
        num_frames: frames sampled uniformly from each video (even: Qwen merges 2 frames per patch).
        max_frame_pixels: frames larger than this are scaled down first; without a processor they
            are also resized to the nearest multiple of patch_size * merge_size per side (with one,
            the checkpoint's processor applies its own pixel budget afterwards).
        calibration_temperature: T in sigmoid(log_odds / T); 1 = raw model probabilities.
        prior_correction: subtract the log-odds of the content-free input (module docstring).
        yes_tokens, no_tokens: answer spellings; those the tokenizer holds as one token are pooled.
        batch_size: (video, question) rows per forward pass.
        device, dtype: where and in which precision the transformers model runs.
        vllm_logprobs, vllm_options: top-k log-probs to read, extra `vllm.LLM` keyword arguments
            (e.g. {"enable_sleep_mode": True} so `sleep()` can free the GPU between phases).
    """

    name: ClassVar[str] = "vlm_judge"
    score_names: ClassVar[tuple[str, ...]] = DIMENSIONS

    def __init__(
        self,
        dimensions: Sequence[str] = ("text_alignment",),
        *,
        backend: str = "transformers",
        model_path: str | None = TINY_MODEL_PATH,
        model: Any = None,
        processor: Any = None,
        tokenizer: Any = None,
        num_frames: int = 8,
        max_frame_pixels: int = 448 * 448,
        calibration_temperature: float = 1.0,
        prior_correction: bool = False,
        yes_tokens: Sequence[str] = YES_SPELLINGS,
        no_tokens: Sequence[str] = NO_SPELLINGS,
        batch_size: int = 8,
        device: str = "cpu",
        dtype: str | None = None,
        seed: int = 0,
        vllm_logprobs: int = 20,
        vllm_options: dict | None = None,
    ):
        if isinstance(dimensions, str):
            dimensions = (dimensions,)
        for dim in dimensions:
            if dim not in QUESTION_TEMPLATES:
                raise ValueError(f"unknown VLM judge dimension {dim!r}; available: {list(DIMENSIONS)}")
        if not dimensions:
            raise ValueError(f"dimensions must name at least one of {list(DIMENSIONS)}")
        if num_frames < 2 or num_frames % 2:
            raise ValueError(f"num_frames must be an even number >= 2 (Qwen's temporal patch is 2), got {num_frames}")
        if not calibration_temperature > 0:
            raise ValueError(f"calibration_temperature must be > 0, got {calibration_temperature}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.score_names = tuple(dimensions)  # per instance: the dimensions this judge asks
        self.dimensions = tuple(dimensions)
        self.num_frames, self.max_frame_pixels, self.batch_size = num_frames, max_frame_pixels, batch_size
        self.calibration_temperature, self.prior_correction = float(calibration_temperature), prior_correction
        if backend == "transformers":
            self.backend = _TransformersBackend(model, processor, tokenizer, model_path, device, dtype, seed)
        elif backend == "vllm":
            if model is not None or processor is not None or tokenizer is not None:
                raise ValueError("backend='vllm' loads its model from model_path; model/processor/tokenizer must be None")
            self.backend = _VLLMBackend(model_path, vllm_logprobs, vllm_options)
        else:
            raise ValueError(f"backend must be 'transformers' or 'vllm', got {backend!r}")
        self.yes_ids = single_token_ids(self.backend.tokenizer, yes_tokens)
        self.no_ids = single_token_ids(self.backend.tokenizer, no_tokens)
        for label, ids, spellings in (("yes_tokens", self.yes_ids, yes_tokens), ("no_tokens", self.no_ids, no_tokens)):
            if not ids:
                raise ValueError(f"{label}={list(spellings)}: none is a single token of this tokenizer")
        if set(self.yes_ids) & set(self.no_ids):
            raise ValueError(f"yes_tokens and no_tokens share token ids {sorted(set(self.yes_ids) & set(self.no_ids))}")
        self._prior_cache: dict[tuple, float] = {}

    # -- frames -----------------------------------------------------------------------------

    def prepare_frames(self, videos: torch.Tensor) -> torch.Tensor:
        """Resample to `num_frames` and resize to the judge's frame size: [B, num_frames, H', W', 3]."""
        videos = resample_frames(videos, self.num_frames)
        h, w = fit_frame_size(videos.shape[2], videos.shape[3], self.backend.frame_factor, self.max_frame_pixels)
        return resize_frames(videos, h, w)

    # -- scoring ----------------------------------------------------------------------------

    def raw_log_odds(self, frames: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        """lse_yes - lse_no [B] for prepared frames (one question per video), in `batch_size` chunks."""
        chunks = []
        for start in range(0, len(questions), self.batch_size):
            stop = start + self.batch_size
            lse_yes, lse_no = self.backend.yes_no_scores(
                frames[start:stop], questions[start:stop], self.yes_ids, self.no_ids
            )
            chunks.append(lse_yes - lse_no)
        return torch.cat(chunks)

    def prior_log_odds(self, dimension: str, frame_shape: tuple[int, ...]) -> float:
        """Log-odds the judge gives the content-free input (grey video, prompt "N/A"); cached."""
        key = (dimension, tuple(frame_shape))
        if key not in self._prior_cache:
            grey = torch.full((1, *frame_shape), 0.5)
            self._prior_cache[key] = float(self.raw_log_odds(grey, [build_question("N/A", dimension)])[0])
        return self._prior_cache[key]

    def log_odds(self, videos: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Calibrated log-odds per dimension ([B] each); the scores are their sigmoids."""
        frames = self.prepare_frames(videos)
        rows = [(i, dim) for dim in self.dimensions for i in range(len(prompts))]
        questions = [build_question(prompts[i], dim) for i, dim in rows]
        raw = self.raw_log_odds(frames[[i for i, _ in rows]], questions).view(len(self.dimensions), len(prompts))
        result = {}
        for d, dim in enumerate(self.dimensions):
            z = raw[d]
            if self.prior_correction:
                z = z - self.prior_log_odds(dim, tuple(frames.shape[1:]))
            result[dim] = z / self.calibration_temperature
        return result

    def _score(self, videos: torch.Tensor, prompts: list[str], first_frames: torch.Tensor | None) -> CriticOutput:
        return CriticOutput(scores={dim: torch.sigmoid(z) for dim, z in self.log_odds(videos, prompts).items()})

    # -- memory between phases ---------------------------------------------------------------

    def sleep(self) -> None:
        """Release accelerator memory while the pool is in another phase (vLLM sleep mode / CPU offload)."""
        self.backend.sleep()

    def wake_up(self) -> None:
        self.backend.wake_up()
