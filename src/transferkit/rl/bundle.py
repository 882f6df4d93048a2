"""The policy bundle: safetensors weights of the SB3 policy plus a JSON manifest; never a pickle.

A bundle is a folder::

    OUT/
      manifest.json        format, environment variant, algorithm, hyper-parameters, spaces, versions, SHA-256s
      policy.safetensors   model.policy.state_dict()
      curve.csv            the learning curve (env steps, mean/std return), when one was recorded

stable-baselines3's own ``model.save`` writes a zip holding pickled objects
(``data`` with cloudpickled schedules and spaces); it is not used. Loading
rebuilds the algorithm from the manifest (:func:`~transferkit.rl.algorithms.build_algorithm`)
and loads the state dict into it. Writing goes through
:func:`transferkit.export.output_lock.atomic_dir`: a temporary folder renamed
at the end, one writer at a time, and an existing output is refused.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from transferkit.errors import BundleError
from transferkit.export.bundle import library_versions as bundle_library_versions
from transferkit.export.bundle_checks import sha256
from transferkit.export.output_lock import PARTIAL_MARKER, atomic_dir, check_not_partial, check_writable

FORMAT = "transferkit-rl-policy"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "policy.safetensors"
REQUIRED = ("env", "algorithm", "policy", "hyperparameters", "policy_kwargs", "n_envs", "observation_space",
            "action_space")

__all__ = ["FORMAT", "MANIFEST", "WEIGHTS", "check_writable", "library_versions", "load_policy", "read_manifest",
           "save_policy"]


def library_versions() -> dict[str, str]:
    """The versions a policy bundle records (:func:`transferkit.export.bundle.library_versions`)."""
    return bundle_library_versions(("transferkit", "stable-baselines3", "gymnasium", "torch", "safetensors", "numpy"))


def save_policy(model, out: str | Path, manifest: dict, *, overwrite: bool = False,
                extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``model.policy``'s weights and ``manifest`` as a bundle at ``out``, atomically.

    Args:
        model: a stable-baselines3 model.
        out: the bundle folder; it must not exist unless ``overwrite``.
        manifest: the manifest's content (``format``, ``files`` and ``versions`` are set here).
        extra: called with the temporary folder to write further files (curves, plots) before the rename.

    Raises:
        BundleError: ``out`` exists (without ``overwrite``) or another run is writing it.
    """
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.policy.state_dict().items()}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        if extra is not None:
            extra(tmp)
        files = {p.name: sha256(p) for p in sorted(tmp.iterdir())
                 if p.is_file() and p.name not in (MANIFEST, PARTIAL_MARKER)}
        full = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest,
                "versions": library_versions(), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=False, allow_nan=False) + "\n",
                                    encoding="utf-8")
    return Path(out)


def read_manifest(path: str | Path) -> dict:
    """Read and check a policy bundle's manifest.

    Raises:
        BundleError: not a folder, unfinished, no or unreadable manifest, another format, missing keys.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"Policy bundle {path} does not exist or is not a folder (make one with "
                          "'transferkit rl train').")
    check_not_partial(path)
    mf = path / MANIFEST
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path} is not a policy bundle: it has no {MANIFEST}.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mf} is not valid JSON: {exc}.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path} is not a policy bundle: {MANIFEST} has format {got!r}, not {FORMAT!r}.")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise BundleError(f"{mf} lacks {', '.join(missing)}; the bundle cannot be rebuilt.")
    return manifest


def load_state(path: str | Path, manifest: dict | None = None) -> dict[str, torch.Tensor]:
    """The policy's state dict from a bundle, after checking its SHA-256 against the manifest."""
    path = Path(path)
    manifest = manifest if manifest is not None else read_manifest(path)
    weights = path / WEIGHTS
    expected = manifest.get("files", {}).get(WEIGHTS)
    if not weights.is_file():
        raise BundleError(f"Policy bundle {path} has no {WEIGHTS}.")
    if expected is not None and sha256(weights) != expected:
        raise BundleError(f"{weights} does not match the SHA-256 in {MANIFEST}: the file was changed or damaged "
                          "after the bundle was written.")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"Cannot read {weights}: {exc}.") from None


def load_policy(path: str | Path, *, env=None, seed: int | None = None, for_training: bool = False):
    """Rebuild the stable-baselines3 model of a bundle and load its weights.

    Args:
        path: the bundle folder.
        env: a VecEnv to attach; default: the manifest's environment variant (one environment).
        seed: seed of the rebuilt model.
        for_training: keep the replay buffer size of the manifest (off-policy algorithms); else a small one.

    Returns:
        ``(model, manifest)``.

    Raises:
        BundleError: see :func:`read_manifest`, or weights that do not fit the rebuilt policy.
    """
    from transferkit.rl.algorithms import build_algorithm
    from transferkit.rl.envs import vec_env

    manifest = read_manifest(path)
    state = load_state(path, manifest)
    hp = dict(manifest["hyperparameters"])
    if not for_training and "buffer_size" in hp:
        hp["buffer_size"] = 1  # inference only: no replay memory
    env = env if env is not None else vec_env(manifest["env"]["spec"], n_envs=1, seed=seed)
    with warnings.catch_warnings():  # PPO's "mini-batch size ... RolloutBuffer" advice concerns training only
        if not for_training:
            warnings.filterwarnings("ignore", message=r"You have specified a mini-batch size")
        model = build_algorithm(manifest["algorithm"], env, hyperparameters=hp,
                                policy_kwargs=manifest["policy_kwargs"], seed=seed, policy=manifest["policy"])
    try:
        model.policy.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"The weights in {Path(path) / WEIGHTS} do not fit the policy rebuilt from "
                          f"{MANIFEST} ({str(exc).splitlines()[0]}).") from None
    return model, manifest
