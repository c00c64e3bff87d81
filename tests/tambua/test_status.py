import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from matcher import errors
from tambua.status import INTERNAL_MESSAGE, code_of, rich_status


@pytest.mark.parametrize(
    "err, code",
    [
        pytest.param(errors.ImageDecodeError("x", "IMAGE_TRUNCATED"), grpc.StatusCode.INVALID_ARGUMENT, id="decode"),
        pytest.param(errors.QualityError("x", "NO_FACE"), grpc.StatusCode.INVALID_ARGUMENT, id="quality"),
        pytest.param(errors.TemplateFormatError("x"), grpc.StatusCode.INVALID_ARGUMENT, id="template-bytes"),
        pytest.param(errors.ModelMismatch("x"), grpc.StatusCode.FAILED_PRECONDITION, id="model"),
        pytest.param(errors.NotFound("x"), grpc.StatusCode.NOT_FOUND, id="not-found"),
        pytest.param(errors.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS, id="exists"),
        pytest.param(errors.Overloaded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED, id="overloaded"),
        pytest.param(errors.NotReady("x"), grpc.StatusCode.UNAVAILABLE, id="loading"),
        pytest.param(errors.Unimplemented("x"), grpc.StatusCode.UNIMPLEMENTED, id="unimplemented"),
        pytest.param(ValueError("secret detail"), grpc.StatusCode.INTERNAL, id="unknown"),
    ],
)
def test_codes(err, code):
    assert code_of(err) is code
    status = rich_status(err)
    assert status.code == getattr(code_pb2, code.name)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "tambua"


def test_reason_and_retriable_travel():
    info = error_details_pb2.ErrorInfo()
    rich_status(errors.Overloaded("busy")).details[0].Unpack(info)
    assert info.reason == "OVERLOADED" and info.metadata["retriable"] == "true"


def test_internal_errors_hide_their_message():
    status = rich_status(RuntimeError("path /secret/file"))
    assert status.message == INTERNAL_MESSAGE


def test_every_error_class_has_a_code():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    for cls in subclasses(errors.TambuaError):
        assert code_of(cls("x")) is not grpc.StatusCode.INTERNAL, cls
