"""Model families by what their checkpoints let an export write; torch-free, so the workflow
plans its outputs from it (as from ggml_plan.ARCHITECTURES)."""

# checkpoints that hold their decoder layers as transformers' Conv1D (GPT-2, and GPT-2 compacted
# here): transformers' compressed-tensors loader quantizes nn.Linear modules only, so a
# compressed-tensors folder of one would load with those layers randomly initialised
CONV1D_MODEL_TYPES = ("gpt2", "gpt2-compact")

# dense model_types whose heads and MLP channels compaction cuts out (compact_models.COMPACT;
# a compacted model, "<type>-compact", compacts again)
COMPACT_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3",
                       "gpt2")
