"""Operator commands: stack up/down, the local Kafka broker, the stream simulator, release actions."""
