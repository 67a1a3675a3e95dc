"""Export to a Hugging Face directory: `comet-export SRC DST` (docs/guide/export.md).

SRC is a converted checkpoint or a training run; the parameters are read from its Orbax
checkpoint a block at a time and streamed into safetensors shards, so host memory holds a
block of one leaf, not a shard or the model. Modules: `source` (what SRC is), `leaves`
(reading parameter blocks), `tensors` (layouts and HF tensor names), `safetensors_out`
(the shard files), `hf_config` (config.json), `write` (the whole export, from disk or from
memory: `export_hf`), `__main__` (the command).
"""


class ExportError(RuntimeError):
    """Bad source, destination or options; nothing was written."""
