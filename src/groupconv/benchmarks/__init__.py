"""groupconv against stock torch, each benchmark timing both sides in the same run (absolute times drift on
shared machines; ratios hold). One module per benchmark, run by `groupconv benchmark SECTION`:

- layers:     every distinct grouped, depthwise and pointwise-grouped conv of the zoo's models, forward and
              forward+backward, both layouts, next to the machine's roofline floor and torch's peak memory.
- hidden_shapes: `layers --hidden-shapes N`: random layer shapes the zoo does not have, each tuned afresh, both
              layouts and passes, the worst ratio to torch and the shapes below 0.95x.
- sweep:      one conv at G = 1, 2, 4, ... against the ideal t(G=1) / G line.
- shuffle:    a ShuffleNet unit with and without its channel shuffle: the fused shuffle should cost (nearly) nothing.
- models:     train-step and inference images/s of a zoo model and of its stock torch.nn twin (twins.py).
- same_flops: ShuffleNet g=8 trained with groupconv against stock torch's g=1 (same multiply-adds).
- dispatch:   the per-call cost of groupconv's argument checks and dispatcher on a tiny conv.
- batch_norm: the fused BN (+ residual) (+ ReLU) against torch's separate ops on the zoo's BN calls.
- triton:     the Triton backend against cuDNN on the zoo's layers (CUDA only).
- inference:  eval-mode forwards: optimize_for_inference's model, eager groupconv and torch, ONNX Runtime, OpenVINO.

shapes.py takes the layer shapes from the models; results.py writes CSVs. The benchmarks sit above
analysis (they use its timing, roofline and memory measurements) and below the command line.
"""
