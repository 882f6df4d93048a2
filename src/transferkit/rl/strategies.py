"""Transfer strategies for stable-baselines3 policies: what is loaded from the source, what is frozen, what is pulled back.

Each strategy acts on a freshly built target model (the algorithm's own
initialisation) and the source policy's ``state_dict``:

* ``finetune``: every weight from the source, everything trains;
* ``frozen-features``: the feature extractor and the hidden layers (SB3's
  ``features_extractor`` and ``mlp_extractor``, DQN's Q-network trunk, SAC's
  actor trunk and critic trunks) from the source and frozen; the output heads
  (action and value nets, the last Q layer, SAC's ``mu``/``log_std``) new,
  as SB3 initialises them;
* ``l2-sp``: ``finetune`` plus the L2-SP penalty toward the source weights
  (:class:`transferkit.strategies.regularizers.L2SP`, reused as it is);
* ``scratch``: nothing from the source (the baseline).

The L2-SP penalty enters through a step pre-hook on each of the algorithm's
optimizers (``torch.optim.Optimizer.register_step_pre_hook``): before every
update it adds ``alpha * (w - w_source)`` to the gradients, so stable-baselines3's
own ``train()`` runs unchanged. The hook runs after SB3's gradient clipping,
so the penalty's gradient is not clipped. EWC is not offered: the existing
:class:`~transferkit.strategies.regularizers.EWC` estimates its Fisher from a
supervised task's predictive distribution on a labelled data set, which a
policy does not have.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from transferkit.errors import ConfigError, unknown_name
from transferkit.strategies.regularizers import L2SP

STRATEGIES = ("finetune", "frozen-features", "l2-sp", "scratch")
#: Default L2-SP weight alpha for policies: the supervised regularizer's own (set for a summed penalty next to a
#: cross-entropy; a policy-gradient loss is about as large, so the same value is kept).
L2SP_WEIGHT = L2SP.default_weight


@dataclass
class Applied:
    """What a strategy did to the target model (recorded in the manifest)."""

    strategy: str
    loaded: int
    frozen: int
    new: int
    hooks: list

    def to_json(self) -> dict:
        return {"strategy": self.strategy, "tensors_loaded": self.loaded, "parameters_frozen": self.frozen,
                "tensors_new": self.new}


def check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise unknown_name("RL transfer strategy", name, STRATEGIES)
    return name


def _last_linear(module: nn.Module, prefix: str) -> str:
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    return f"{prefix}.{names[-1]}." if names else f"{prefix}."


def head_prefixes(policy: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the policy's output heads (what ``frozen-features`` re-initialises)."""
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.dqn.policies import DQNPolicy
    from stable_baselines3.sac.policies import SACPolicy

    if isinstance(policy, ActorCriticPolicy):
        return ("action_net.", "value_net.", "log_std")
    if isinstance(policy, DQNPolicy):
        return (_last_linear(policy.q_net.q_net, "q_net.q_net"),
                _last_linear(policy.q_net_target.q_net, "q_net_target.q_net"))
    if isinstance(policy, SACPolicy):
        out = ["actor.mu.", "actor.log_std"]
        for net in ("critic", "critic_target"):
            for i, q in enumerate(getattr(policy, net).q_networks):
                out.append(_last_linear(q, f"{net}.qf{i}"))
        return tuple(out)
    raise ConfigError(f"frozen-features does not know the heads of {type(policy).__name__}.")


def _target_network(name: str) -> bool:
    # copies updated by Polyak averaging, never by an optimizer: neither frozen nor penalised
    return name.startswith(("q_net_target.", "critic_target."))


def apply_strategy(model, strategy: str, source_state: dict[str, torch.Tensor], *,
                   l2sp_weight: float = L2SP_WEIGHT) -> Applied:
    """Load ``source_state`` into ``model.policy`` as ``strategy`` says; freeze or hook as needed.

    Raises:
        ConfigError: the source tensors do not fit the target policy (names or shapes).
    """
    check_strategy(strategy)
    policy = model.policy
    if strategy == "scratch":
        return Applied(strategy, 0, 0, len(policy.state_dict()), [])
    fresh = policy.state_dict()
    _check_fits(source_state, fresh)
    heads = head_prefixes(policy) if strategy == "frozen-features" else ()
    merged = {k: (fresh[k] if k.startswith(heads) else source_state[k]) for k in fresh}
    policy.load_state_dict(merged)
    frozen, hooks = 0, []
    if strategy == "frozen-features":
        for name, p in policy.named_parameters():
            if not name.startswith(heads) and not _target_network(name):
                p.requires_grad_(False)
                frozen += p.numel()
    elif strategy == "l2-sp":
        hooks = _l2sp_hooks(model, l2sp_weight)
    new = sum(1 for k in fresh if k.startswith(heads)) if heads else 0
    return Applied(strategy, len(fresh) - new, frozen, new, hooks)


def _check_fits(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(target) - set(source))
    extra = sorted(set(source) - set(target))
    shapes = [f"{k}: source {tuple(source[k].shape)} vs target {tuple(v.shape)}" for k, v in target.items()
              if k in source and source[k].shape != v.shape]
    if missing or extra or shapes:
        parts = ([f"missing {missing[:5]}"] if missing else []) + ([f"unexpected {extra[:5]}"] if extra else [])
        raise ConfigError(f"The source policy's weights do not fit the target policy ({'; '.join(parts + shapes[:5])})."
                          " Build the target with the source's algorithm and net_arch.")


class _Params(nn.Module):
    """Some parameters of a policy under one module, as the L2SP regularizer walks them."""

    def __init__(self, params: dict[str, nn.Parameter]):
        super().__init__()
        self.params = nn.ParameterDict({k.replace(".", "__"): p for k, p in params.items()})


class PolicyView(nn.Module):
    """A policy seen as :class:`~transferkit.strategies.base.TransferModel` is by a regularizer.

    ``backbone`` holds the pre-trained parameters one optimizer updates (all of
    them: an RL transfer keeps the source's heads, so there is no new head) and
    ``head`` is empty, so L2-SP's ``beta * ||w_new||^2`` term is 0.
    """

    def __init__(self, params: dict[str, nn.Parameter]):
        super().__init__()
        self.backbone = _Params(params)
        self.head = _Params({})


def _l2sp_hooks(model, weight: float) -> list:
    names = {id(p): n for n, p in model.policy.named_parameters()}
    hooks = []
    for optimizer in _optimizers(model.policy):
        params = {names[id(p)]: p for g in optimizer.param_groups for p in g["params"]
                  if id(p) in names and p.requires_grad and not _target_network(names[id(p)])}
        view = PolicyView(params)
        reg = L2SP(weight=weight)
        reg.setup(view, None)

        def hook(opt, args, kwargs, reg=reg, view=view):
            with torch.enable_grad():
                penalty = sum(reg.penalty(view, None, None).values())
                if penalty.requires_grad:
                    penalty.backward()

        hooks.append(optimizer.register_step_pre_hook(hook))
    return hooks


def _optimizers(policy: nn.Module) -> list[torch.optim.Optimizer]:
    """The policy's optimizers: one for PPO/A2C/DQN, the actor's and the critic's for SAC."""
    found = [m.optimizer for m in policy.modules() if isinstance(getattr(m, "optimizer", None), torch.optim.Optimizer)]
    unique = []
    for opt in found:
        if all(opt is not u for u in unique):
            unique.append(opt)
    return unique
