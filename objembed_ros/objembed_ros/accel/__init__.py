"""objembed_ros.accel: ONNX export, onnxruntime/TensorRT projector runtimes and CUDA-graph
text runner; ``install_projector_backend`` / ``install_text_graphs`` fill the encoder's hooks."""
