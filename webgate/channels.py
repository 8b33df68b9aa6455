"""The name the README gives receivers for checking a webhook's signature
(``webgate.channels.verify_signature``); the channels themselves are :mod:`webgate.notify.channels`."""

from webgate.notify.channels import SIGNATURE_HEADER, verify_signature

__all__ = ["SIGNATURE_HEADER", "verify_signature"]
