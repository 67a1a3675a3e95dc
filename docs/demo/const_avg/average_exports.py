"""Average the safetensors of several exported HF dirs (same layout) into DST (a copy of the first)."""
import shutil, sys
from pathlib import Path
import numpy as np
from safetensors.numpy import load_file, save_file

dst, srcs = Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]]
tmp = dst.with_name(dst.name + ".tmp")
shutil.rmtree(tmp, ignore_errors=True)
shutil.copytree(srcs[0], tmp)
for f in sorted(srcs[0].glob("*.safetensors")):
    ts = [load_file(s / f.name) for s in srcs]
    out = {k: np.mean([t[k].astype(np.float64) for t in ts], axis=0).astype(ts[0][k].dtype) for k in ts[0]}
    save_file(out, tmp / f.name, metadata={"format": "pt"})
tmp.rename(dst)
print(dst, len(srcs))
