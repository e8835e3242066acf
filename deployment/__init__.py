"""Deployment: inference packages, ONNX and TorchScript export with a parity check, and torch-free ONNX embedding.

This file imports nothing, so that `deployment.onnx_embedder` runs where PyTorch is not installed."""
