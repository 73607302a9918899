"""Model families by what their checkpoints let an export write; torch-free, so the workflow
plans its outputs from it (as from ggml_plan.ARCHITECTURES)."""

# checkpoints that hold their decoder layers as transformers' Conv1D (GPT-2, and GPT-2 compacted
# here): transformers' compressed-tensors loader quantizes nn.Linear modules only, so a
# compressed-tensors folder of one would load with those layers randomly initialised
CONV1D_MODEL_TYPES = ("gpt2", "gpt2-compact")
