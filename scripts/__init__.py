"""Operator commands: stack up/down/status, the local Kafka broker, the stream simulator, release actions,
the demo.

Owns: starting and stopping local services by PID, the simulator, and the operator's CLIs; they
compose the domain (`movierec/`) with its adapters (`movierec/adapters/`).

Must not touch: domain decisions (release policy, training, the batch format), the tests package,
processes it did not start.
"""
