"""Compozy Operator: a Kubernetes-native workflow engine for AI agents and tools."""

__version__ = "0.1.0"
