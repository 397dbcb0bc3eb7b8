"""The one error type a client ever sees."""


class TrackerError(Exception):
    """A request refused; ``str(exc)`` is the reason sent back to the client.

    HTTP sends it as a bencoded ``failure reason``, UDP as an error packet.
    The message names the field and the rule it broke.
    """
