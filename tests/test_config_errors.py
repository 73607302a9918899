"""Config errors in one short line (issue 17), from errors the real schema produces."""

from pathlib import Path

import jsonschema
import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from helpers import REPO, snakemake, tiny_config
from surgeon.config_errors import cause, explain, normalise

SCHEMA_PATH = REPO / "workflow/schemas/config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())


def config_with(**exp):
    return {"model": {"name": "m", "source": "s"}, "data": {"source": "d"},
            "experiments": {"foo": {"method": "magnitude", "structure": "unstructured",
                                    "target": 0.5, **exp}}}


def message(cfg) -> str:
    """explain() of the error Snakemake's validate raises (a WorkflowError around it)."""
    with pytest.raises(WorkflowError) as err:
        validate(cfg, str(SCHEMA_PATH), set_default=True)
    return explain(cause(err.value))


def with_section(**sections):
    return {**config_with(), **sections}


CASES = [
    (config_with(shot=2), "experiments.foo.shot: unknown key (did you mean 'shots'?)"),
    ({**config_with(), "modle": {}}, "modle: unknown key (did you mean 'model'?)"),
    (config_with(bogus=1, other=2),
     "experiments.foo.bogus: unknown key (and 1 more); allowed: compact, coupled_cost, "
     "damping_a, damping_g, evaluate_shots, keep_shots, lora_lr, lora_rank, lora_steps, lora_windows, "
     "method, nm_schedule, quantize, recover, recover_objective, sequential, shots, structure, "
     "target, units, zeroshot"),
    (config_with(shots="two"), "experiments.foo.shots: 'two' is not an integer"),
    (config_with(shots=0), "experiments.foo.shots: 0 is out of range; allowed: >= 1"),
    (config_with(target=1.0), "experiments.foo.target: 1.0 is out of range; allowed: >= 0 and < 1"),
    (config_with(structure="2:4", target=0.6),
     "experiments.foo.target: 0.6 is out of range; allowed: <= 0.5 (2:4 removes at most half "
     "of the weights)"),
    (config_with(method="llm-surgen"),
     "experiments.foo.method: 'llm-surgen' is not allowed; allowed: 'llm-surgeon', 'sparsegpt', "
     "'wanda', 'magnitude', 'k-obd', 'l-obd', 'llm-pruner', 'slimgpt' (did you mean "
     "'llm-surgeon'?)"),
    (config_with(method="sparsegpt", structure="structured"),
     "experiments.foo.structure: 'structured' is not allowed; allowed: 'unstructured', '2:4' "
     "(sparsegpt and wanda prune elements, not rows/columns)"),
    (config_with(structure=124),
     "experiments.foo.structure: 124 is not allowed; allowed: 'unstructured', '2:4', "
     "'structured' (YAML reads an unquoted 2:4 as the base-60 number 124: write \"2:4\")"),
    (config_with(keep_shots=[0]),
     "experiments.foo.keep_shots[0]: 0 is out of range; allowed: >= 1"),
    (config_with(keep_shots="some"),
     "experiments.foo.keep_shots: 'some' is not allowed; allowed: 'all', 'final' or a list of "
     "integers >= 1"),
    (with_section(quantization={"q": {"bits": 4}}),
     "quantization.q: {'bits': 4} is not allowed; allowed: a mapping with method or a mapping "
     "with qat_from"),
    (with_section(quantization={"q": {"method": "rtn", "qat_from": "x"}}),
     "quantization.q: {'method': 'rtn', 'qat_from': 'x'} matches more than one of: a mapping "
     "with method or a mapping with qat_from; give only one"),
    (with_section(recovery={"targets": "q_proj," * 20}),  # a long value is cut
     "recovery.targets: 'q_proj,q_proj,q_proj,q_proj,q_proj,q_proj,q_proj,q_proj,... is not "
     "allowed; allowed: 'all' or a list of strings"),
    (with_section(quantization={"q": {"method": "rtn", "bits": 3}}),
     "quantization.q.bits: 3 is not allowed; allowed: 4, 5, 8 (symmetric grids are Q4_0 (4 bit), "
     "Q5_0 (5 bit) and Q8_0 (8 bit))"),
    (with_section(quantization={"q": {"method": "gptq", "gguf_type": "Q4_K"}}),
     "quantization.q.gguf_type: 'Q4_K' is not allowed; allowed: 'Q4_0', 'Q5_0', 'Q8_0', "
     "'Q4_K_M', 'Q6_K' (did you mean 'Q4_K_M'?)"),
    (with_section(experiments={"dense": config_with()["experiments"]["foo"]}),
     "experiments: the name 'dense' is reserved"),
    (with_section(experiments={}), "experiments: {} needs at least 1 entries"),
    (with_section(device="gpu"), "device: 'gpu' does not match ^(auto|cpu|cuda(:[0-9]+)?)$"),
    ({"model": {"name": "m", "source": "s"}, "data": {"source": "d"}},
     "config: missing required key 'experiments'"),
]


@pytest.mark.parametrize("cfg, expected", CASES, ids=[c[1].split(":")[0] + str(i)
                                                      for i, c in enumerate(CASES)])
def test_one_line_with_the_key_the_value_and_what_is_allowed(cfg, expected):
    text = message(cfg)
    assert text == expected and "\n" not in text


def test_plain_jsonschema_errors_work_too():
    error = next(jsonschema.Draft202012Validator(SCHEMA).iter_errors(config_with(shot=2)))
    assert explain(cause(error)) == "experiments.foo.shot: unknown key (did you mean 'shots'?)"


def test_unquoted_two_four_is_accepted_with_a_warning():
    cfg = yaml.safe_load("experiments:\n  e24: {method: wanda, structure: 2:4, target: 0.5}\n")
    assert cfg["experiments"]["e24"]["structure"] == 124  # what YAML 1.1 makes of it
    warnings = normalise(cfg)
    assert cfg["experiments"]["e24"]["structure"] == "2:4"
    assert warnings == ['experiments.e24.structure: read as 124 (YAML\'s base-60 reading of an '
                        'unquoted 2:4), taken as "2:4"; quote it to silence this']
    validate({**config_with(), **cfg}, str(SCHEMA_PATH))  # now valid
    assert normalise({"experiments": {"e": {"structure": "2:4"}}}) == []
    assert normalise({"experiments": {"e": {"structure": True}}}) == []
    assert normalise({"experiments": "not a mapping"}) == []


@pytest.mark.slow
def test_snakemake_prints_the_short_message_not_the_schema(tmp_path, llama_dir):
    cfg = tiny_config(llama_dir)
    cfg["experiments"]["surgeon"]["shot"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    r = snakemake(tmp_path, "--configfile", str(tmp_path / "bad.yaml"), "-n")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "experiments.surgeon.shot: unknown key (did you mean 'shots'?)" in out.splitlines()
    assert len(out.splitlines()) < 30 and "Failed validating" not in out, out
    assert not (tmp_path / "results").exists()

    # an unquoted 2:4 runs, with the warning, and reaches the rules as 2:4
    text = yaml.safe_dump(tiny_config(llama_dir)).replace("structure: '2:4'", "structure: 2:4")
    assert "structure: 2:4" in text
    Path(tmp_path / "c124.yaml").write_text(text)
    r = snakemake(tmp_path, "--configfile", str(tmp_path / "c124.yaml"), "-n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "experiments.wanda-24.structure: read as 124" in r.stdout + r.stderr
    assert "--method wanda --structure 2:4 " in r.stdout
    assert not (tmp_path / "results").exists()
