"""The config schema accepts exactly the method x structure combinations the code implements."""

from pathlib import Path

import jsonschema
import pytest
import yaml

from surgeon.methods import METHODS

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1]
                         / "workflow/schemas/config.schema.yaml").read_text())
STRUCTURES = ("unstructured", "2:4", "structured")


def config_with(**exp):
    return {"model": {"name": "m", "source": "s"}, "data": {"source": "d"},
            "experiments": {"e": exp}}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("structure", STRUCTURES)
def test_schema_matches_the_method_table(method, structure):
    cfg = config_with(method=method, structure=structure, target=0.5)
    valid = jsonschema.Draft202012Validator(SCHEMA).is_valid(cfg)
    assert valid == (structure in METHODS[method].structures)


def test_two_four_target_is_at_most_half():
    validator = jsonschema.Draft202012Validator(SCHEMA)
    assert not validator.is_valid(config_with(method="magnitude", structure="2:4", target=0.6))
    assert validator.is_valid(config_with(method="magnitude", structure="2:4", target=0.25))


def test_compaction_only_for_structured_experiments():
    validator = jsonschema.Draft202012Validator(SCHEMA)
    structured = dict(method="magnitude", structure="structured", target=0.2)
    assert validator.is_valid(config_with(**structured, compact=True))
    assert not validator.is_valid(config_with(**{**structured, "structure": "unstructured"},
                                              compact=True))
    assert validator.is_valid(config_with(**{**structured, "structure": "unstructured"},
                                          compact=False))


def test_recovery_targets_are_names_or_all():
    validator = jsonschema.Draft202012Validator(SCHEMA)
    cfg = config_with(method="magnitude", structure="unstructured", target=0.5, recover=True)
    assert validator.is_valid({**cfg, "recovery": {"targets": ["q_proj", "down_proj"]}})
    assert validator.is_valid({**cfg, "recovery": {"targets": "all"}})
    assert not validator.is_valid({**cfg, "recovery": {"targets": "q_proj"}})
    assert not validator.is_valid({**cfg, "recovery": {"steps": 0}})


def test_recovery_defaults_are_the_lora_settings_defaults():
    """One default per setting: the schema's recovery block and LoraSettings (which the
    recover/qat options take theirs from) agree; targets "all" is None in LoraSettings."""
    from dataclasses import fields

    from surgeon.lora import LoraSettings

    schema = SCHEMA["properties"]["recovery"]["properties"]
    defaults = LoraSettings()
    for f in fields(LoraSettings):
        if f.name in schema and "default" in schema[f.name] and f.name != "targets":
            assert schema[f.name]["default"] == getattr(defaults, f.name), f.name
