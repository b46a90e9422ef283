"""Export to ONNX and TensorRT: installed as `icv_deploy.export`."""
