#!/usr/bin/env bash
# One prepared GPU check for the device tool (H100/H200, jax backend, no TensorFlow there).
#
# Here, once:   ../shared/tools/device-wheels.sh h5py==3.14.0 click==8.5.1 rich==15.0.0 pydicom==3.0.2
# Then run it with the device tool:  carry [".whl"], command "bash scripts/gpu_check.sh", timeout_s 540.
#
# It writes 1,024 phantom PNGs, then runs `xrayfeat extract --device gpu` for vgg16 and
# inception_v3 in float32 and mixed_bfloat16 (batch 128, weights none, 224 px) and prints
# images/s for each, plus the bare jitted model on inputs already on the GPU for comparison.
set -euo pipefail
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
fi
export KERAS_BACKEND=jax TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu_check}"; mkdir -p "$out"
work=$(mktemp -d)
python3 -m xrayfeat phantoms "$work/data" --task four --per-class 256 --size 512 --seed 0 --json
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 - "$work" <<'PY' | tee "$out/gpu_check.txt"
import json, subprocess, sys, time
import numpy as np
work = sys.argv[1]
rows = []
for backbone in ("vgg16", "inception_v3"):
    for precision in ("float32", "mixed_bfloat16"):
        cmd = [sys.executable, "-m", "xrayfeat", "extract", f"{work}/data", "-b", backbone, "--weights", "none",
               "--device", "gpu", "--precision", precision, "--batch-size", "128", "--cache-dir", f"{work}/cache", "--json"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(backbone, precision, "FAILED", proc.stderr[-2000:]); continue
        r = json.loads(proc.stdout)
        # the bare model: uint8 batches already on the device, jitted, steady state
        import keras, jax
        from xrayfeat.backbones import get_spec, WeightsInfo, build_extractor
        model, _ = build_extractor(get_spec(backbone), WeightsInfo("none", seed=0), image_size=224, precision=precision)
        x = jax.device_put(np.random.default_rng(0).integers(0, 255, (128, 224, 224, 3), dtype=np.uint8))
        jax.block_until_ready(model.predict_on_batch(np.asarray(x)))
        call = jax.jit(lambda a: model(a, training=False))
        jax.block_until_ready(call(x))
        t = time.perf_counter(); reps = 20
        for _ in range(reps):
            y = call(x)
        jax.block_until_ready(y)
        bare = reps * 128 / (time.perf_counter() - t)
        rows.append((backbone, precision, r["images_per_s"], bare, r["seconds"]))
        print(f"{backbone:13} {precision:15} extract {r['images_per_s']:8.1f} img/s ({r['extracted']} images, {r['seconds']:.1f} s)  bare model {bare:8.1f} img/s", flush=True)
print(" ".join(f"{b}_{p}_extract={e:.1f} {b}_{p}_bare={m:.1f}" for b, p, e, m, _ in rows))
PY
