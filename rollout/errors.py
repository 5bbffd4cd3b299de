"""Exception tree of the rollout package.

    RolloutError
    ├── PolicyError                 the policy could not produce a turn
    │   ├── PolicyUnavailableError  connection errors, 429 or 5xx after the retry budget
    │   ├── PolicyTimeoutError      no reply within the per-request timeout
    │   ├── PolicyRequestError      the server refused the request (4xx: bad model name, ...)
    │   └── TokenIdsMissingError    the server returned no token ids (a server, not a model, issue)
    ├── AdapterError                loading or unloading a LoRA adapter failed
    │   └── AdapterTransientError   worth repeating: directory not visible yet, server unreachable
    ├── LaunchError                 `vllm serve` could not be built, started or never became healthy
    ├── RolloutConfigError          settings or inputs that cannot work
    └── RolloutAbortedError         more episodes failed than the failure budget allows

A policy or tool-server failure inside one episode is recorded on that trajectory (its `error`
field), never folded into a zero reward; only a run-level problem raises.
"""

from __future__ import annotations


class RolloutError(Exception):
    """Base of every error this package raises on purpose."""


class PolicyError(RolloutError):
    pass


class PolicyUnavailableError(PolicyError):
    pass


class PolicyTimeoutError(PolicyError):
    pass


class PolicyRequestError(PolicyError):
    pass


class TokenIdsMissingError(PolicyError):
    pass


class AdapterError(RolloutError):
    pass


class AdapterTransientError(AdapterError):
    """A load that may succeed if repeated: the server cannot see the adapter directory yet
    (a shared filesystem that lags), cannot be reached, or answered 5xx."""


class LaunchError(RolloutError):
    pass


class RolloutConfigError(RolloutError):
    pass


class RolloutAbortedError(RolloutError):
    pass
