"""Train a teacher: `accelerate launch launch/train_teacher.py --config configs/teacher/<id>.yaml [key=value ...]`."""
from depthpi.train.entry import main

if __name__ == "__main__":
    main("teacher")
