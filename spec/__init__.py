"""beaverq.spec: the executable specification that the model is checked against."""
