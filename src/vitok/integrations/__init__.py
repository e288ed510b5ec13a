"""Integrations with other tools (Hugging Face Hub, diffusers, ONNX): optional extras.

Each module imports vitok and its own optional dependency; vitok itself never imports them.
"""
