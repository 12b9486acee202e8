"""A teacher factory for tests/test_pipeline.py, imported by the pipeline as
`pipeline_models:small_teacher` (the tests folder is on sys.path under pytest)."""
from kdlib.models import TeacherCNN


def small_teacher(input_shape=(1, 8, 8), num_classes=10):
    return TeacherCNN(input_shape, num_classes, width=8, hidden=32)
