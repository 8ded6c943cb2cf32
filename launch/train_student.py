"""Train a student: `accelerate launch launch/train_student.py --config configs/student/<id>.yaml [key=value ...]`."""
from depthpi.train.entry import main

if __name__ == "__main__":
    main("student")
