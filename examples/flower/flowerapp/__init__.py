"""flowerapp: a Flower app in the pattern of Flower's PyTorch quickstart."""
