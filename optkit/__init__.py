"""optkit: make Keras vision models small and fast, and prove each gain with numbers.

Importing this package is cheap: nothing here imports TensorFlow. Modules that need it
(keras_io, steps, exporters) import it inside functions, through optkit.keras_io.
"""
__version__ = "0.1.0"
