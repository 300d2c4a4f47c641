"""Config presets, overrides, JSON round trip and the batch-size rescaling rule."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nerflib import configs


@pytest.mark.parametrize("name", configs.PRESETS)
def test_round_trip_through_json(name, tmp_path):
    cfg = configs.get_preset(name)
    path = tmp_path / "config.json"
    configs.save_json(cfg, path)
    again = configs.load_json(path)
    assert again == cfg
    assert isinstance(again.model.num_prop_samples, tuple) and isinstance(again.debug_nan_steps, tuple)
    assert json.loads(path.read_text())["model"]["num_prop_samples"] == list(cfg.model.num_prop_samples)
    assert not list(tmp_path.glob(".config.json*"))  # atomic write left no temp file


def test_mipnerf360_is_the_papers_recipe():
    c = configs.mipnerf360()
    assert (c.batch_size, c.max_steps) == (16384, 250_000)
    assert (c.lr_init, c.lr_final, c.lr_delay_steps, c.lr_delay_mult) == (2e-3, 2e-5, 512, 0.01)
    assert (c.adam_beta1, c.adam_beta2, c.adam_eps) == (0.9, 0.999, 1e-6)
    assert (c.grad_max_norm, c.grad_max_val, c.grad_clip_per_module) == (1e-3, 0.0, True)
    assert (c.factor, c.test_every, c.render_chunk_size) == (4, 8, 16384)
    assert (c.ray_near, c.ray_far) == (0.2, 1e6)
    assert c.model.num_prop_samples == (64, 64) and c.model.nerf_net_width == 1024


def test_overrides_top_level_dotted_and_model_dict():
    c = configs.get_preset("tiny", batch_size=512, **{"model.num_nerf_samples": 4})
    assert c.batch_size == 512 and c.model.num_nerf_samples == 4
    c = configs.get_preset("tiny", model={"nerf_net_width": 8}, debug_nan_steps=[3])
    assert c.model.nerf_net_width == 8 and c.debug_nan_steps == (3,)
    with pytest.raises(ValueError, match="unknown config field 'bach_size'"):
        configs.get_preset("tiny", bach_size=1)
    with pytest.raises(ValueError, match="unknown model config field"):
        configs.get_preset("tiny", **{"model.widht": 1})
    with pytest.raises(ValueError, match="unknown preset"):
        configs.get_preset("huge")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        configs.tiny(batch_size=0)
    with pytest.raises(ValueError, match="normalize"):
        configs.tiny(normalize="sphere")
    with pytest.raises(ValueError, match="unknown Config fields"):
        configs.from_dict({"bogus": 1})


def test_from_dict_fills_missing_fields_with_defaults():
    d = configs.to_dict(configs.tiny())
    del d["nan_patience"]
    assert configs.from_dict(d).nan_patience == configs.Config.nan_patience


def test_scale_batch_size_follows_multinerf_readme():
    c = configs.mipnerf360()
    h = configs.scale_batch_size(c, 8192)  # halve the batch
    assert h.batch_size == 8192
    assert h.lr_init == pytest.approx(1e-3) and h.lr_final == pytest.approx(1e-5)
    assert h.max_steps == 500_000 and h.lr_delay_steps == 1024
    assert dataclasses.replace(h, batch_size=c.batch_size, lr_init=c.lr_init, lr_final=c.lr_final,
                               max_steps=c.max_steps, lr_delay_steps=c.lr_delay_steps) == c  # nothing else changed
    q = configs.scale_batch_size(c, 4096)
    assert q.max_steps == 1_000_000 and q.lr_init == pytest.approx(5e-4)
    back = configs.scale_batch_size(h, 16384)
    assert back.max_steps == c.max_steps and back.lr_init == pytest.approx(c.lr_init)
    with pytest.raises(ValueError, match="new_batch_size"):
        configs.scale_batch_size(c, 0)


def test_white_background_follows_the_model():
    assert configs.tiny().white_background
    assert not configs.tiny(model={"background": "black"}).white_background


def test_for_scene_adapts_the_recipe_to_the_capture():
    import numpy as np

    from nerflib.types import Camera, Scene

    def scene(**kind):
        return Scene(names=["a.png"], c2w=np.eye(4)[None, :3], cameras=[Camera("PINHOLE", 8, 8, (8.0, 8.0, 4.0, 4.0))],
                     camera_idx=np.zeros(1, np.int32), **kind)

    base = configs.get_preset("mipnerf360")
    assert configs.for_scene(base, scene()) == base
    assert configs.for_scene(base, scene(forward_facing=True)).normalize == "forward"
    # The one rule localization applies to checkpoints too: 360 -> forward for LLFF-style captures only.
    for mode in ("360", "forward", None):
        plain = configs.override(base, normalize=mode)
        assert configs.normalization_for(plain, scene()) == mode
        assert configs.normalization_for(plain, scene(forward_facing=True)) == ("forward" if mode else None)
    obj = configs.for_scene(base, scene(object_on_background=True))
    assert (obj.model.opaque_background, obj.model.data_loss_type) == (False, "mse")
    assert configs.for_scene(obj, scene(object_on_background=True)) == obj  # idempotent
    # The user's overrides are applied after it and win.
    mine = configs.override(obj, **{"model.data_loss_type": "charbonnier"})
    assert mine.model.data_loss_type == "charbonnier" and not mine.model.opaque_background
    assert obj.model.skip_threshold == 0 and obj.model.sample_budget == 1.0  # no skipping for the MLP model

    # `fast` skips empty space; on an object scene it also packs samples (object_scene_skipping).
    fast = configs.get_preset("fast")
    assert fast.model.skip_threshold > 0 and fast.model.sample_budget == 1.0 and fast.model.prop_sparsity_mult == 0
    assert configs.for_scene(fast, scene()) == fast  # a capture where every ray hits something: unchanged
    fobj = configs.for_scene(fast, scene(object_on_background=True))
    m = fobj.model
    assert (m.sample_budget, m.prop_sparsity_mult, m.prop_grad_fraction) == (0.35, 0.01, 0.125)
    assert dict(m.hashgrid_options)["log2_table_size"] == 18 and not m.opaque_background
    assert dict(m.prop_hashgrid_options) == dict(fast.model.prop_hashgrid_options)
    assert configs.for_scene(fobj, scene(object_on_background=True)) == fobj  # idempotent
    for name in ("tiny", "mipnerf360"):  # presets without skipping keep their sampling
        m = configs.for_scene(configs.get_preset(name), scene(object_on_background=True)).model
        assert m.skip_threshold == 0 and m.sample_budget == 1.0 and m.prop_sparsity_mult == 0


def test_preset_names_are_declared_once_and_the_schemas_follow():
    """configs declares the presets (and which need a GPU); the schemas' enums must list the same names."""
    import yaml

    from pathlib import Path

    schemas = Path(__file__).resolve().parents[1] / "config" / "schemas"
    config_enum = yaml.safe_load((schemas / "config.schema.yaml").read_text())["properties"]["default_preset"]["enum"]
    sheet_enum = yaml.safe_load((schemas / "datasets.schema.yaml").read_text())["properties"]["preset"]["enum"]
    assert tuple(config_enum) == configs.PRESET_CHOICES
    assert tuple(sheet_enum) == ("", *configs.PRESET_CHOICES)
    assert configs.PRESETS == ("mipnerf360", "tiny", "fast", "quality")
    assert configs.GPU_PRESETS == ("mipnerf360", "fast", "quality")
    assert configs.AUTO_GPU_PRESET in configs.GPU_PRESETS and not configs.needs_gpu(configs.AUTO_CPU_PRESET)


def test_tiles_a_power_of_two_on_a_hash_grid_preset():
    """Config.tiles (issue #26): K > 1 adapts a hash-grid preset to the tiled model (its speed-ups off), names
    the supported presets otherwise, and a user's model override the tiled model lacks fails, named."""
    assert configs.tiled_presets() == ("tiny", "fast", "quality")
    assert configs.get_preset("fast").tiles == 1 and configs.get_preset("fast").model.prop_grad_fraction == 0.25
    c = configs.get_preset("fast", tiles=4)
    m = c.model
    assert c.tiles == 4 and (m.opaque_background, m.skip_threshold, m.prop_grad_fraction) == (False, 0.0, 1.0)
    assert m.hashgrid_options == configs.fast().model.hashgrid_options  # the field itself unchanged
    for bad, why in (({"tiles": 3}, "power of two"), ({"tiles": 0}, "power of two"),
                     ({"tiles": 2, "model.num_glo_features": 4}, "num_glo_features must be 0")):
        with pytest.raises(ValueError, match=why):
            configs.get_preset("tiny", **bad)
    with pytest.raises(ValueError, match="field must be 'hashgrid'.*presets it supports: tiny, fast, quality"):
        configs.get_preset("mipnerf360", tiles=2)
