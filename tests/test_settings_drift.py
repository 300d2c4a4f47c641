"""Every setting written in more than one place agrees with its one declaration.

The YAML files (config/schemas/*.schema.yaml, config/config.yaml) cannot import
Python, so they repeat what nerflib declares: preset names (configs.PRESET_CHOICES),
image factors (pyramid.FACTORS), localization settings (localize.workflow_settings,
nerflib.settings), SfM mappers and matchers (sfm.MAPPERS / matching.MATCHERS), camera
models (types.CAMERA_MODELS). The CLI derives from the declarations; these tests
also catch a CLI option that stopped doing so. A default or a name changed in only
one place fails here, naming both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from nerflib import cli, configs, localize, matching, pyramid, scene_io, sfm
from nerflib import settings as settings_lib
from nerflib.types import CAMERA_MODELS

REPO = Path(__file__).resolve().parents[1]
CONFIG_SCHEMA = yaml.safe_load((REPO / "config/schemas/config.schema.yaml").read_text())["properties"]
SHEET_SCHEMA = yaml.safe_load((REPO / "config/schemas/datasets.schema.yaml").read_text())["properties"]
CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())


def _cli_option(step: str, dest: str) -> argparse.Action:
    """The argparse action of `nerf STEP`'s option that stores into `dest`."""
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in sub.choices[step]._actions if a.dest == dest)


def test_presets_agree():
    choices = list(configs.PRESET_CHOICES)
    assert CONFIG_SCHEMA["default_preset"]["enum"] == choices, "config.schema.yaml default_preset vs configs.PRESET_CHOICES"
    assert SHEET_SCHEMA["preset"]["enum"] == ["", *choices], "datasets.schema.yaml preset vs configs.PRESET_CHOICES"
    assert CONFIG["default_preset"] in choices
    assert list(_cli_option("train", "preset").choices) == choices


def test_factors_agree():
    assert SHEET_SCHEMA["factor"]["enum"] == list(pyramid.FACTORS), "datasets.schema.yaml factor vs pyramid.FACTORS"
    assert SHEET_SCHEMA["factor"]["default"] in pyramid.FACTORS
    assert list(_cli_option("pyramid", "factor").choices) == [f for f in pyramid.FACTORS if f > 1]
    assert list(_cli_option("train", "factor").choices) == list(pyramid.FACTORS)
    assert _cli_option("train", "factor").default is None  # the preset's factor, not 1
    common = (REPO / "rules/common.smk").read_text()
    assert 'factor="|".join(str(f) for f in PYRAMID_FACTORS if f > 1)' in common, "the wildcard comes from FACTORS"


@pytest.mark.parametrize("setting", localize.workflow_settings(), ids=lambda s: s.name)
def test_localize_setting_agrees(setting):
    """Schema property, config.yaml value and `nerf localize` option of each declared setting."""
    prop = CONFIG_SCHEMA["localize"]["properties"][setting.name]
    expected = settings_lib.schema_property(setting)
    got = {k: (" ".join(v.split()) if k == "description" else v) for k, v in prop.items() if k in expected}
    assert got == expected, f"config.schema.yaml localize.{setting.name} vs its declaration"
    assert set(prop) <= set(expected), f"config.schema.yaml localize.{setting.name}: keys beyond the declaration"
    assert CONFIG["localize"][setting.name] == setting.default, f"config.yaml localize.{setting.name}"
    option = _cli_option("localize", setting.name)
    assert (option.default, option.type) == (setting.default, setting.type)
    assert (tuple(option.choices) if option.choices else None) == setting.choices


def test_localize_settings_complete():
    names = [s.name for s in localize.workflow_settings()]
    assert list(CONFIG_SCHEMA["localize"]["properties"]) == [*names, "options"]
    assert [k for k in CONFIG["localize"] if k != "options"] == names


def test_sfm_choices_agree():
    assert CONFIG_SCHEMA["sfm"]["properties"]["mapper"]["enum"] == list(sfm.MAPPERS)
    assert SHEET_SCHEMA["matcher"]["enum"] == list(matching.MATCHERS)
    assert list(_cli_option("poses", "mapper").choices) == list(sfm.MAPPERS)
    assert list(_cli_option("poses", "matcher").choices) == list(matching.MATCHERS)


def test_pose_formats_and_camera_models_agree():
    assert SHEET_SCHEMA["camera_model"]["enum"] == list(CAMERA_MODELS)
    assert list(_cli_option("poses", "camera_model").choices) == list(CAMERA_MODELS)
    assert SHEET_SCHEMA["poses_format"]["enum"] == list(scene_io.SHEET_FORMATS)
    assert list(_cli_option("poses", "poses_format").choices) == list(scene_io.SHEET_FORMATS)


def test_a_changed_default_is_caught(monkeypatch):
    """The comparison above is not vacuous: a declaration changed alone no longer matches the schema."""
    setting = next(s for s in localize.workflow_settings() if s.name == "iters")
    changed = settings_lib.Setting(**{**setting.__dict__, "default": setting.default + 1})
    assert settings_lib.schema_property(changed) != {
        k: v for k, v in CONFIG_SCHEMA["localize"]["properties"]["iters"].items() if k != "description"
    } | {"description": setting.description}


def test_tiles_setting_agrees():
    """configs.Config.tiles (declared once) vs config.schema.yaml train.tiles, config.yaml and the sheet's column."""
    (setting,) = settings_lib.declared(configs.Config, ["tiles"])
    prop = CONFIG_SCHEMA["train"]["properties"]["tiles"]
    got = {k: (" ".join(v.split()) if k == "description" else v) for k, v in prop.items()}
    assert got == settings_lib.schema_property(setting), "config.schema.yaml train.tiles vs configs.Config.tiles"
    assert CONFIG["train"]["tiles"] == setting.default == configs.Config().tiles == 1
    column = SHEET_SCHEMA["tiles"]  # empty cell = config's train.tiles: no default of its own
    assert (column["type"], column["minimum"]) == (prop["type"], prop["minimum"]) and "default" not in column
    assert ", ".join(configs.tiled_presets()) in prop["description"] and ", ".join(configs.tiled_presets()) in \
        column["description"], "the supported presets named in the schemas"
