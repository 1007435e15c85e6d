"""The data path: decoding, cropping, caching and dequantizing images (the Rust extension
``vaeflow_cli._native`` with a Pillow fallback), the train/test splits, the batch loader, image
files in and out, and dataset downloads."""
