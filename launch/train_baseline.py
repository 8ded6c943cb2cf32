"""Train a baseline: `accelerate launch launch/train_baseline.py --config configs/baseline/<id>.yaml [key=value ...]`."""
from depthpi.train.entry import main

if __name__ == "__main__":
    main("baseline")
