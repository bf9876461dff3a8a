"""PretrainedImageEncoder: the real loading path for VBench's DINO / CLIP features, exercised with tiny
randomly initialised transformers models saved to and loaded from a local folder (no download)."""

import json

import pytest
import torch

from evaluation.vbench import PretrainedImageEncoder, background_consistency, subject_consistency

transformers = pytest.importorskip("transformers")

TINY_VISION = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                   image_size=32, patch_size=8)


def tiny_dinov2():
    return transformers.Dinov2Model(transformers.Dinov2Config(**TINY_VISION))


def tiny_clip():
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=64,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=TINY_VISION, projection_dim=16))


def tiny_clip_vision():
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY_VISION))


@pytest.fixture(scope="module")
def frames():
    return torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(0))


def clip_image_embeds(model, pixels):
    """What VBench's clip.encode_image returns: the projected pooled vision output."""
    return model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)


@pytest.mark.parametrize("build, stats, width, reference", [
    (tiny_dinov2, PretrainedImageEncoder.IMAGENET, 32, lambda m, x: m(pixel_values=x).pooler_output),
    (tiny_clip, PretrainedImageEncoder.CLIP, 16, clip_image_embeds),
    (tiny_clip_vision, PretrainedImageEncoder.CLIP, 32, lambda m, x: m(pixel_values=x).pooler_output),
])
def test_from_pretrained_loads_weights_and_normalises_like_the_family(tmp_path, frames, build, stats, width, reference):
    torch.manual_seed(0)
    model = build().eval()
    model.save_pretrained(tmp_path)
    features = PretrainedImageEncoder.from_pretrained(tmp_path)(frames)
    assert features.shape == (4, width)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in stats)
    with torch.no_grad():  # 32 px frames are the models' input size: no resize, only normalisation
        expected = reference(model, (frames.permute(0, 3, 1, 2) - mean) / std)
    assert torch.allclose(features, expected, atol=1e-5)


def test_encoder_consistency_static_is_one_and_changing_frames_lower(tmp_path, frames):
    torch.manual_seed(0)
    tiny_dinov2().save_pretrained(tmp_path)
    encoder = PretrainedImageEncoder.from_pretrained(tmp_path)
    static = frames[:1].repeat(4, 1, 1, 1)
    scores = subject_consistency(torch.stack([static, frames]), encoder)
    assert scores[0].item() == pytest.approx(1.0, abs=1e-6) and scores[1] < scores[0]
    resized = background_consistency(torch.nn.functional.interpolate(  # 48 px frames are resized to 32
        static.permute(0, 3, 1, 2), size=48).permute(0, 2, 3, 1)[None], encoder)
    assert resized.item() == pytest.approx(1.0, abs=1e-6)


def test_from_pretrained_names_what_it_accepts(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        PretrainedImageEncoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type='bert'.*dinov2"):
        PretrainedImageEncoder.from_pretrained(tmp_path)
