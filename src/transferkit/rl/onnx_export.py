"""Export a policy bundle's network to ONNX: observation in, the action the environment receives out.

The graph is the policy's deterministic ``_predict`` (the argmax of a
categorical policy or of DQN's Q-values, the mean of a Gaussian, SAC's
squashed mean) followed by stable-baselines3's own post-processing for a
``Box`` action space (rescaling a squashed action, else clipping), so it
returns what ``model.predict(obs, deterministic=True)`` returns. Parity: the
export is run by ONNX Runtime on observations drawn from the observation
space and compared with ``model.predict``; a mismatch removes the file.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.errors import ConfigError
from transferkit.export.output_lock import atomic_dir, check_writable
from transferkit.rl.bundle import load_policy

OBS_INPUT, ACTION_OUTPUT = "observation", "action"
PARITY_SAMPLES = 256
ATOL = 1e-4


class DeterministicPolicy(nn.Module):
    """``observation [B, ...] -> action [B, ...]`` as ``model.predict(obs, deterministic=True)`` gives it."""

    def __init__(self, policy, action_space):
        super().__init__()
        from gymnasium import spaces

        self.policy = policy
        self.box = isinstance(action_space, spaces.Box)
        self.squash = self.box and bool(getattr(policy, "squash_output", False))
        if self.box:
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        action = self.policy._predict(observation, deterministic=True)
        if self.squash:  # SB3's unscale_action: [-1, 1] -> [low, high]
            return self.low + 0.5 * (action + 1.0) * (self.high - self.low)
        if self.box:
            return torch.maximum(torch.minimum(action, self.high), self.low)
        return action


def export_onnx(bundle: str | Path, out: str | Path, *, overwrite: bool = False, opset: int = 17) -> dict:
    """Write ``OUT/policy.onnx`` and ``OUT/export.json`` (parity figures) for a policy bundle.

    Raises:
        ConfigError: ONNX Runtime is missing, or the exported graph disagrees with the policy (parity).
        BundleError: see :func:`~transferkit.rl.bundle.load_policy`; ``out`` exists without ``overwrite``.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("Exporting to ONNX needs onnx and onnxruntime: pip install 'transferkit[export]'.") from None
    check_writable(out, overwrite)
    model, manifest = load_policy(bundle, seed=0)
    model.policy.set_training_mode(False)
    obs_space = model.observation_space
    graph = DeterministicPolicy(model.policy, model.action_space).eval()
    example = torch.as_tensor(np.stack([obs_space.sample() for _ in range(2)]), dtype=torch.float32)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        path = tmp / "policy.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter, chosen on purpose
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the distribution's argument check is traced
            torch.onnx.export(graph, (example,), str(path), input_names=[OBS_INPUT], output_names=[ACTION_OUTPUT],
                              dynamic_axes={OBS_INPUT: {0: "batch"}, ACTION_OUTPUT: {0: "batch"}},
                              opset_version=opset, dynamo=False)
        parity = check_parity(model, path, ort)
        info = {"bundle": str(bundle), "env": manifest["env"], "algorithm": manifest["algorithm"],
                "input": {"name": OBS_INPUT, "shape": ["batch", *obs_space.shape], "dtype": "float32"},
                "output": {"name": ACTION_OUTPUT, "action_space": manifest["action_space"]},
                "opset": opset, "parity": parity}
        (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def check_parity(model, path: Path, ort) -> dict:
    """Compare ONNX Runtime's actions with ``model.predict`` on observations drawn from the observation space."""
    space = model.observation_space
    space.seed(0)
    obs = np.stack([space.sample() for _ in range(PARITY_SAMPLES)]).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([ACTION_OUTPUT], {OBS_INPUT: obs})[0]
    want, _ = model.predict(obs, deterministic=True)
    got, want = np.asarray(got).reshape(np.shape(want)), np.asarray(want)
    if np.issubdtype(want.dtype, np.integer):
        agree = float((got == want).mean())
        ok, detail = agree == 1.0, {"agreement": agree}
    else:
        diff = float(np.abs(got.astype(np.float64) - want).max())
        ok, detail = diff <= ATOL, {"max_abs_diff": diff, "atol": ATOL}
    if not ok:
        raise ConfigError(f"The ONNX export of the policy disagrees with it on {PARITY_SAMPLES} observations "
                          f"({detail}); nothing was written.")
    return {"samples": PARITY_SAMPLES, "passed": True, **detail}
