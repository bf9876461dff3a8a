"""VLM judge on a tiny random Qwen2-VL: calibrated P(yes), input layout, batching, backends."""

import sys
import types

import numpy as np
import pytest
import torch

from reward_services.base import build_critic
from reward_services.vlm_judge import (
    DIMENSIONS,
    NO_SPELLINGS,
    YES_SPELLINGS,
    VLMJudge,
    build_question,
    patchify_videos,
    prepare_inputs,
    tiny_qwen2vl,
)

PROMPTS = [
    "a red square moves left on a blue background",
    "two green circles move right",
    "the camera pans left over a city of tall grey towers at night",
    "a dog",
]


@pytest.fixture(scope="module")
def tiny():
    return tiny_qwen2vl(seed=0)


@pytest.fixture(scope="module")
def videos():
    return torch.rand(4, 6, 32, 32, 3, generator=torch.Generator().manual_seed(1))


def make_judge(tiny, **options):
    options.setdefault("num_frames", 4)
    return VLMJudge(model=tiny.model, tokenizer=tiny.tokenizer, **options)


# ---- scores ----------------------------------------------------------------------------------


def test_scores_are_finite_probabilities_per_dimension_and_deterministic(tiny, videos):
    judge = make_judge(tiny, dimensions=DIMENSIONS)
    first = judge.score(videos, PROMPTS).scores
    second = judge.score(videos, PROMPTS).scores
    assert set(first) == set(DIMENSIONS) and judge.score_names == DIMENSIONS
    for dim in DIMENSIONS:
        p = first[dim]
        assert p.shape == (4,) and torch.isfinite(p).all()
        assert ((p > 0) & (p < 1)).all()
        assert torch.equal(p, second[dim])


def test_probability_is_two_way_softmax_of_first_generated_token_logits(tiny, videos):
    """Recompute with HF generate (its own cache and position path) and the yes/no vocab ids by name."""
    judge = make_judge(tiny)
    p = judge.score(videos[:1], PROMPTS[:1]).scores["text_alignment"]
    frames = judge.prepare_frames(videos[:1])
    inputs = prepare_inputs(
        frames, [build_question(PROMPTS[0], "text_alignment")], config=tiny.model.config, tokenizer=tiny.tokenizer
    )
    with torch.no_grad():
        generated = tiny.model.generate(
            **inputs, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    logits = generated.logits[0][0]
    yes = tiny.tokenizer.convert_tokens_to_ids(["yes", "Yes", "Ġyes", "ĠYes"])
    no = tiny.tokenizer.convert_tokens_to_ids(["no", "No", "Ġno", "ĠNo"])
    lse_yes, lse_no = logits[yes].logsumexp(0), logits[no].logsumexp(0)
    assert sorted(judge.yes_ids) == sorted(yes) and sorted(judge.no_ids) == sorted(no)
    torch.testing.assert_close(p[0], torch.sigmoid(lse_yes - lse_no), atol=1e-5, rtol=0)
    torch.testing.assert_close(p[0], torch.softmax(torch.stack([lse_yes, lse_no]), 0)[0], atol=1e-5, rtol=0)


def test_temperature_scales_log_odds_and_large_temperature_gives_one_half(tiny, videos):
    raw = make_judge(tiny).score(videos, PROMPTS).scores["text_alignment"]
    assert (raw - 0.5).abs().max() > 1e-2  # otherwise the checks below are vacuous
    halved = make_judge(tiny, calibration_temperature=2.0).score(videos, PROMPTS).scores["text_alignment"]
    torch.testing.assert_close(halved, torch.sigmoid(torch.logit(raw.double()) / 2).float(), atol=1e-5, rtol=0)
    flat = make_judge(tiny, calibration_temperature=1e6).score(videos, PROMPTS).scores["text_alignment"]
    assert (flat - 0.5).abs().max() < 1e-5


def test_swapping_yes_and_no_token_sets_gives_one_minus_p(tiny, videos):
    p = make_judge(tiny, dimensions=DIMENSIONS).score(videos, PROMPTS).scores
    swapped = make_judge(tiny, dimensions=DIMENSIONS, yes_tokens=NO_SPELLINGS, no_tokens=YES_SPELLINGS)
    q = swapped.score(videos, PROMPTS).scores
    for dim in DIMENSIONS:
        torch.testing.assert_close(q[dim], 1 - p[dim], atol=1e-6, rtol=0)


def test_prior_correction_subtracts_content_free_log_odds(tiny, videos):
    raw = make_judge(tiny).score(videos, PROMPTS).scores["text_alignment"]
    judge = make_judge(tiny, prior_correction=True)
    corrected = judge.score(videos, PROMPTS).scores["text_alignment"]
    prior = judge.prior_log_odds("text_alignment", (4, 32, 32, 3))
    assert abs(prior) > 1e-3
    torch.testing.assert_close(corrected, torch.sigmoid(torch.logit(raw.double()) - prior).float(), atol=1e-5, rtol=0)
    grey = torch.full((1, 6, 32, 32, 3), 0.5)
    content_free = judge.score(grey, ["N/A"]).scores["text_alignment"]
    torch.testing.assert_close(content_free, torch.tensor([0.5]), atol=1e-6, rtol=0)


def test_batched_scores_equal_one_by_one(tiny, videos):
    """Prompts of different lengths force padding; left padding + masks must make it invisible."""
    judge = make_judge(tiny, dimensions=DIMENSIONS, batch_size=3)  # 12 rows -> 4 uneven forward passes
    batched = judge.score(videos, PROMPTS).scores
    for i in range(len(PROMPTS)):
        single = judge.score(videos[i : i + 1], PROMPTS[i : i + 1]).scores
        for dim in DIMENSIONS:
            torch.testing.assert_close(batched[dim][i], single[dim][0], atol=1e-5, rtol=0)


def test_video_reaches_the_model(tiny, videos):
    judge = make_judge(tiny)
    same_prompt = judge.score(videos, [PROMPTS[0]] * 4).scores["text_alignment"]
    assert torch.cdist(same_prompt[:, None], same_prompt[:, None]).add(torch.eye(4)).min() > 1e-3
    # a change confined to the last frame (after resampling keeps it) changes the score
    edited = videos[:1].clone()
    edited[:, -1] = 1 - edited[:, -1]
    assert (judge.score(edited, PROMPTS[:1]).scores["text_alignment"] - same_prompt[0]).abs() > 1e-4


def test_uint8_videos_are_scaled(tiny, videos):
    judge = make_judge(tiny)
    as_uint8 = (videos * 255).round().to(torch.uint8)
    torch.testing.assert_close(
        judge.score(as_uint8, PROMPTS).scores["text_alignment"],
        judge.score(as_uint8.float() / 255, PROMPTS).scores["text_alignment"],
    )


# ---- frames and inputs -----------------------------------------------------------------------


def test_frames_are_resampled_to_even_count_and_resized_to_patch_multiple(tiny):
    judge = make_judge(tiny, num_frames=6)
    frames = judge.prepare_frames(torch.rand(2, 17, 30, 41, 3))
    assert frames.shape == (2, 6, 32, 40, 3)  # factor = 4 px patches x 2 merge = 8
    small = make_judge(tiny, max_frame_pixels=16 * 16).prepare_frames(torch.rand(1, 4, 64, 128, 3))
    assert small.shape[2] % 8 == 0 and small.shape[3] % 8 == 0 and small.shape[2] * small.shape[3] <= 256
    with pytest.raises(ValueError, match="num_frames"):
        make_judge(tiny, num_frames=5)


def test_patch_layout_matches_qwen_image_processor_and_patch_embed():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    p, tp, m = 4, 2, 2
    frame = torch.rand(16, 24, 3)
    static = frame.expand(1, tp, -1, -1, -1)  # a 2-frame still video = the processor's image path
    ours, grid = patchify_videos(static, p, tp, m)
    reference = Qwen2VLImageProcessorPil(patch_size=p, temporal_patch_size=tp, merge_size=m, do_resize=False)(
        images=[(frame * 255).round().numpy().astype(np.uint8)], return_tensors="pt"
    )
    quantised, _ = patchify_videos((static * 255).round() / 255, p, tp, m)
    assert grid.tolist() == reference["image_grid_thw"].tolist() == [[1, 4, 6]]
    torch.testing.assert_close(quantised, reference["pixel_values"].float(), atol=1e-4, rtol=0)
    # time order: row 0 is the top-left patch, channels first, then frames 0 and 1 of the pair
    video = torch.rand(1, 4, 16, 16, 3)
    rows, grid = patchify_videos(video, p, tp, m)
    patch = rows.view(-1, 3, tp, p, p)  # how PatchEmbed reads a row
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    expected = (video[0, 2:4, :p, :p] - mean) / std  # second temporal group, top-left patch
    first_of_group_1 = int(grid[0, 1] * grid[0, 2])
    torch.testing.assert_close(patch[first_of_group_1], expected.permute(3, 0, 1, 2))
    # row 1 is the patch to its right (same 2x2 merge block), row 2 the one below
    torch.testing.assert_close(patch[1, :, 0], ((video[0, 0, :p, p : 2 * p] - mean) / std).permute(2, 0, 1))
    torch.testing.assert_close(patch[2, :, 0], ((video[0, 0, p : 2 * p, :p] - mean) / std).permute(2, 0, 1))


def test_prepare_inputs_without_processor(tiny):
    config = tiny.model.config
    frames = torch.rand(2, 4, 32, 16, 3)
    inputs = prepare_inputs(frames, ["short?", "a much longer question?"], config=config, tokenizer=tiny.tokenizer)
    ids, mask, types_ = inputs["input_ids"], inputs["attention_mask"], inputs["mm_token_type_ids"]
    assert inputs["video_grid_thw"].tolist() == [[2, 8, 4]] * 2
    assert inputs["pixel_values_videos"].shape == (2 * 2 * 8 * 4, 3 * 2 * 4 * 4)
    assert ((ids == config.video_token_id).sum(1) == 2 * 8 * 4 // 4).all()
    assert torch.equal(types_ == 2, ids == config.video_token_id) and not (types_ == 1).any()
    assert mask[:, -1].all() and not mask[0, 0] and mask[1].all()  # left padding on the shorter row
    assert (ids[0][mask[0] == 0] == tiny.tokenizer.pad_token_id).all()


def test_mismatched_tokenizer_is_rejected(tiny):
    config = tiny.model.config.__class__.from_dict(tiny.model.config.to_dict())
    config.video_token_id = 5
    with pytest.raises(ValueError, match="video_token_id"):
        prepare_inputs(torch.rand(1, 2, 16, 16, 3), ["q"], config=config, tokenizer=tiny.tokenizer)


class _StubProcessor:
    """Duck-typed Qwen2VLProcessor: checks what the judge hands a processor, then builds the same inputs."""

    chat_template = None

    def __init__(self, tokenizer, config):
        self.tokenizer, self.config, self.calls = tokenizer, config, 0

    def __call__(self, text, videos, padding, return_tensors):
        self.calls += 1
        assert padding and return_tensors == "pt" and self.tokenizer.padding_side == "left"
        assert all(t.count("<|video_pad|>") == 1 for t in text)
        assert all(v.dtype == np.uint8 and v.ndim == 4 and v.shape[-1] == 3 for v in videos)
        frames = torch.stack([torch.from_numpy(v).float() / 255 for v in videos])
        questions = [t.split("<|vision_end|>")[1].split("<|im_end|>")[0] for t in text]
        return prepare_inputs(frames, questions, config=self.config, tokenizer=self.tokenizer)


def test_processor_path_gets_uint8_frames_and_matches_processor_free_path(tiny, videos):
    as_uint8 = (videos * 255).round().to(torch.uint8)
    stub = _StubProcessor(tiny.tokenizer, tiny.model.config)
    with_processor = VLMJudge(model=tiny.model, processor=stub, num_frames=4).score(as_uint8, PROMPTS)
    without = make_judge(tiny).score(as_uint8, PROMPTS)
    assert stub.calls == 1
    torch.testing.assert_close(with_processor.scores, without.scores, atol=1e-6, rtol=0)


# ---- questions, config, registry -------------------------------------------------------------


def test_questions_per_dimension():
    prompt = "a red square moves left on a blue background."
    assert build_question(prompt, "text_alignment") == (
        "Does this video show a red square moves left on a blue background? Answer yes or no."
    )
    assert build_question(prompt, "object_count") == "Does this video show exactly one red square? Answer yes or no."
    assert build_question(prompt, "action") == "In this video, does a red square move left? Answer yes or no."
    assert build_question("two green circles move right", "action") == (
        "In this video, do two green circles move right? Answer yes or no."
    )
    assert build_question("a dog is running across the field", "action") == (
        "In this video, is a dog running across the field? Answer yes or no."
    )
    # toy-world grammar (toyworld.prompts.describe)
    assert build_question("a blue circle stays still on a gray background", "action") == (
        "In this video, does a blue circle stay still? Answer yes or no."
    )
    assert build_question("a red fluid swirls in place on a black background", "action") == (
        "In this video, does a red fluid swirl in place? Answer yes or no."
    )
    assert build_question("three red triangles stay still on a white background", "object_count") == (
        "Does this video show exactly three red triangles? Answer yes or no."
    )
    assert build_question("3 boxes", "object_count") == (
        'Does this video show the number of objects described by "3 boxes"? Answer yes or no.'
    )  # no verb: subject boundary unknown -> fallback
    assert "described by" in build_question("the camera pans left", "object_count")
    assert build_question("sunset", "action") == 'Does the motion in this video match "sunset"? Answer yes or no.'


def test_unknown_dimension_is_named(tiny):
    with pytest.raises(ValueError, match="'colour_fidelity'.*text_alignment"):
        make_judge(tiny, dimensions=("text_alignment", "colour_fidelity"))
    with pytest.raises(ValueError, match="'spin'"):
        build_question("a cat", "spin")


def test_bad_options_are_named(tiny):
    with pytest.raises(ValueError, match="calibration_temperature"):
        make_judge(tiny, calibration_temperature=0.0)
    with pytest.raises(ValueError, match="backend"):
        VLMJudge(backend="onnx")
    with pytest.raises(ValueError, match="yes_tokens"):
        make_judge(tiny, yes_tokens=("affirmative",))


def test_registered_and_buildable_from_config(videos):
    judge = build_critic("vlm_judge", dimensions=["action"], num_frames=4)  # default: builtin tiny model
    assert judge.score(videos[:2], PROMPTS[:2]).scores["action"].shape == (2,)


# ---- vLLM backend ----------------------------------------------------------------------------


def test_vllm_backend_without_vllm_names_the_gpu_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"teleboost\[gpu\]"):
        VLMJudge(backend="vllm", model_path="Qwen/Qwen2-VL-2B-Instruct")


def _fake_vllm(tiny, seen):
    """A stand-in `vllm` module whose LLM answers with the tiny model's top-k log-probabilities."""

    class SamplingParams:
        def __init__(self, max_tokens, logprobs, temperature):
            self.max_tokens, self.logprobs = max_tokens, logprobs

    class LLM:
        def __init__(self, model, limit_mm_per_prompt, **options):
            seen["model"], seen["limit"] = model, limit_mm_per_prompt

        def get_tokenizer(self):
            return tiny.tokenizer

        def generate(self, requests, sampling, use_tqdm):
            assert sampling.max_tokens == 1
            seen["requests"] = requests
            frames = torch.stack([torch.from_numpy(r["multi_modal_data"]["video"]).float() / 255 for r in requests])
            questions = [r["prompt"].split("<|vision_end|>")[1].split("<|im_end|>")[0] for r in requests]
            inputs = prepare_inputs(frames, questions, config=tiny.model.config, tokenizer=tiny.tokenizer)
            with torch.no_grad():
                logprobs = tiny.model(**inputs).logits[:, -1].log_softmax(-1)
            top = logprobs.topk(sampling.logprobs, dim=-1)
            return [
                types.SimpleNamespace(
                    outputs=[
                        types.SimpleNamespace(
                            logprobs=[
                                {int(t): types.SimpleNamespace(logprob=float(v)) for t, v in zip(ids, vals)}
                            ]
                        )
                    ]
                )
                for ids, vals in zip(top.indices, top.values)
            ]

    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)


def test_vllm_backend_request_format_and_scores_match_transformers(tiny, videos, monkeypatch):
    seen = {}
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(tiny, seen))
    as_uint8 = (videos * 255).round().to(torch.uint8)
    vocab = len(tiny.tokenizer)
    judge = VLMJudge(dimensions=DIMENSIONS, backend="vllm", model_path="some/ckpt", vllm_logprobs=vocab, num_frames=4)
    scores = judge.score(as_uint8, PROMPTS).scores
    assert seen["model"] == "some/ckpt" and seen["limit"] == {"video": 1}
    request = seen["requests"][0]
    assert request["prompt"].count("<|vision_start|><|video_pad|><|vision_end|>") == 1
    assert request["prompt"].endswith("<|im_start|>assistant\n")
    assert request["multi_modal_data"]["video"].dtype == np.uint8
    assert request["multi_modal_data"]["video"].shape == (4, 32, 32, 3)
    reference = make_judge(tiny, dimensions=DIMENSIONS).score(as_uint8, PROMPTS).scores
    torch.testing.assert_close(scores, reference, atol=1e-5, rtol=0)
    # with only the top 2 returned, missing answers get the 2nd log-prob: still a probability
    top2 = VLMJudge(backend="vllm", model_path="some/ckpt", vllm_logprobs=2, num_frames=4)
    p = top2.score(as_uint8, PROMPTS).scores["text_alignment"]
    assert torch.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()


@pytest.mark.gpu
def test_vllm_backend_runs_a_saved_tiny_checkpoint(tiny, videos, tmp_path):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    sizes = dict(patch_size=4, temporal_patch_size=2, merge_size=2, size={"shortest_edge": 1024, "longest_edge": 4096})
    tiny.model.save_pretrained(tmp_path)
    Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**sizes),
        video_processor=Qwen2VLVideoProcessor(**sizes),
        tokenizer=tiny.tokenizer,
    ).save_pretrained(tmp_path)
    judge = VLMJudge(
        backend="vllm", model_path=str(tmp_path), num_frames=4,
        vllm_options={"max_model_len": 512, "gpu_memory_utilization": 0.2, "enforce_eager": True},
    )  # fmt: skip
    p = judge.score(videos, PROMPTS).scores["text_alignment"]
    assert p.shape == (4,) and torch.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
