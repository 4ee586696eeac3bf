"""The build layer: checkpoint -> ONNX export -> engine bundle, each verified against the stage before."""
