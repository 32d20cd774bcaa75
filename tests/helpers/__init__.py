"""What several test modules share: configs and fixture data, reference forwards and models."""
