#!/bin/bash
# probe.sh RUN_DIR TAG CORE: export steps, averages, probe 2k/16k depth 0 (25 samples)
# As run in session 22; /tmp/d22/avg.py is average_exports.py beside this file.
set -u
run=$1; tag=$2; core=$3; d=/tmp/d22/probe_$tag; mkdir -p $d
cd /work/main
P="taskset -c $core python"
for s in 1500 1550 1600 1650 1700 1750 1800 1850 1900 1950 2000; do
  [ -d $d/hf_$s ] || $P -m comet_jax.export $run $d/hf_$s --step $s --layout native --quiet >/dev/null 2>&1 || echo "export $s failed"
done
[ -d $d/hf_avg11 ] || $P /tmp/d22/avg.py $d/hf_avg11 $(for s in 1500 1550 1600 1650 1700 1750 1800 1850 1900 1950 2000; do echo $d/hf_$s; done)
[ -d $d/hf_avg5 ] || $P /tmp/d22/avg.py $d/hf_avg5 $(for s in 1800 1850 1900 1950 2000; do echo $d/hf_$s; done)
for m in avg11 avg5 2000 1900 1800 1700 1600 1500; do
  [ -f $d/p_$m/results.json ] && continue
  [ -d $d/ck_$m ] || $P -m comet_jax.convert $d/hf_$m $d/ck_$m --quiet >/dev/null 2>&1 || echo "convert $m failed"
  $P -m comet_jax.evals.passkey --checkpoint $d/ck_$m --lengths 2048,16384 --depths 0 --samples 25 --batch-size 25 --mode comet --out $d/p_$m --quiet >/dev/null 2>&1
  python -c "
import json;r=json.load(open('$d/p_$m/results.json'))
print('$tag $m', [(c.get('length'),c.get('depth'),c.get('exact',c.get('accuracy'))) for c in r['cells']] if 'cells' in r else list(r)[:8])" | tee -a $d/summary.txt
done
