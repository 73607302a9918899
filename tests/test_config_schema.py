"""The config schema accepts exactly the method x structure combinations the code implements."""

from pathlib import Path

import jsonschema
import pytest
import yaml

from surgeon.prune import METHODS

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
