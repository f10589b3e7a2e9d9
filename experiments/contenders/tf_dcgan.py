"""TensorFlow's DCGAN tutorial (tensorflow.org/tutorials/generative/dcgan), run as written.

Changes, none in the training: MNIST comes from the IDX files (``mnist_idx``) instead
of ``tf.keras.datasets``; ``--epochs`` replaces ``EPOCHS = 50``; the run is seeded
(``set_random_seed``); the per-epoch figures are saved without being shown; the
checkpoint every 15 epochs and the notebook's display calls are left out. At the end
it saves 10,000 samples (inference mode, as the tutorial draws its pictures) to
``samples.npy`` for ``experiments/frechet.py`` and prints ``BENCH_RESULT {json}``.

    python experiments/contenders/tf_dcgan.py --data-dir DIR [--epochs 50] [--out out/tf_dcgan]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mnist_idx import load_mnist, missing, report  # noqa: E402

try:
    import tensorflow as tf
    from tensorflow.keras import layers
except ImportError:
    missing("tensorflow")

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--data-dir", default=os.environ.get("FNLEARN_DATA_DIR"))
parser.add_argument("--source", choices=("idx", "sample"), default="idx")
parser.add_argument("--epochs", type=int, default=50)
parser.add_argument("--train-size", type=int, default=None)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default="out/tf_dcgan")
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)
tf.keras.utils.set_random_seed(args.seed)

(train_images, train_labels), (_, _) = load_mnist(args.data_dir, source=args.source)
train_images = train_images[:args.train_size]

train_images = train_images.reshape(train_images.shape[0], 28, 28, 1).astype('float32')
train_images = (train_images - 127.5) / 127.5  # Normalize the images to [-1, 1]

BUFFER_SIZE = 60000
BATCH_SIZE = 256

# Batch and shuffle the data
train_dataset = tf.data.Dataset.from_tensor_slices(train_images).shuffle(BUFFER_SIZE).batch(
    BATCH_SIZE)


def make_generator_model():
    model = tf.keras.Sequential()
    model.add(layers.Dense(7*7*256, use_bias=False, input_shape=(100,)))
    model.add(layers.BatchNormalization())
    model.add(layers.LeakyReLU())

    model.add(layers.Reshape((7, 7, 256)))
    assert model.output_shape == (None, 7, 7, 256)  # Note: None is the batch size

    model.add(layers.Conv2DTranspose(128, (5, 5), strides=(1, 1), padding='same',
                                     use_bias=False))
    assert model.output_shape == (None, 7, 7, 128)
    model.add(layers.BatchNormalization())
    model.add(layers.LeakyReLU())

    model.add(layers.Conv2DTranspose(64, (5, 5), strides=(2, 2), padding='same',
                                     use_bias=False))
    assert model.output_shape == (None, 14, 14, 64)
    model.add(layers.BatchNormalization())
    model.add(layers.LeakyReLU())

    model.add(layers.Conv2DTranspose(1, (5, 5), strides=(2, 2), padding='same', use_bias=False,
                                     activation='tanh'))
    assert model.output_shape == (None, 28, 28, 1)

    return model


def make_discriminator_model():
    model = tf.keras.Sequential()
    model.add(layers.Conv2D(64, (5, 5), strides=(2, 2), padding='same',
                            input_shape=[28, 28, 1]))
    model.add(layers.LeakyReLU())
    model.add(layers.Dropout(0.3))

    model.add(layers.Conv2D(128, (5, 5), strides=(2, 2), padding='same'))
    model.add(layers.LeakyReLU())
    model.add(layers.Dropout(0.3))

    model.add(layers.Flatten())
    model.add(layers.Dense(1))

    return model


generator = make_generator_model()
discriminator = make_discriminator_model()

# This method returns a helper function to compute cross entropy loss
cross_entropy = tf.keras.losses.BinaryCrossentropy(from_logits=True)


def discriminator_loss(real_output, fake_output):
    real_loss = cross_entropy(tf.ones_like(real_output), real_output)
    fake_loss = cross_entropy(tf.zeros_like(fake_output), fake_output)
    total_loss = real_loss + fake_loss
    return total_loss


def generator_loss(fake_output):
    return cross_entropy(tf.ones_like(fake_output), fake_output)


generator_optimizer = tf.keras.optimizers.Adam(1e-4)
discriminator_optimizer = tf.keras.optimizers.Adam(1e-4)

EPOCHS = args.epochs
noise_dim = 100
num_examples_to_generate = 16

# You will reuse this seed overtime (so it's easier)
# to visualize progress in the animated GIF)
seed = tf.random.normal([num_examples_to_generate, noise_dim])


# Notice the use of `tf.function`
# This annotation causes the function to be "compiled".
@tf.function
def train_step(images):
    noise = tf.random.normal([BATCH_SIZE, noise_dim])

    with tf.GradientTape() as gen_tape, tf.GradientTape() as disc_tape:
        generated_images = generator(noise, training=True)

        real_output = discriminator(images, training=True)
        fake_output = discriminator(generated_images, training=True)

        gen_loss = generator_loss(fake_output)
        disc_loss = discriminator_loss(real_output, fake_output)

    gradients_of_generator = gen_tape.gradient(gen_loss, generator.trainable_variables)
    gradients_of_discriminator = disc_tape.gradient(disc_loss,
                                                    discriminator.trainable_variables)

    generator_optimizer.apply_gradients(zip(gradients_of_generator,
                                            generator.trainable_variables))
    discriminator_optimizer.apply_gradients(zip(gradients_of_discriminator,
                                                discriminator.trainable_variables))


epoch_seconds = []


def train(dataset, epochs):
    for epoch in range(epochs):
        start = time.time()

        for image_batch in dataset:
            train_step(image_batch)

        # Produce images for the GIF as you go
        generate_and_save_images(generator, epoch + 1, seed)

        epoch_seconds.append(time.time() - start)
        print(f'Time for epoch {epoch + 1} is {time.time()-start} sec', flush=True)


def generate_and_save_images(model, epoch, test_input):
    # Notice `training` is set to False.
    # This is so all layers run in inference mode (batchnorm).
    predictions = model(test_input, training=False)

    fig = plt.figure(figsize=(4, 4))

    for i in range(predictions.shape[0]):
        plt.subplot(4, 4, i+1)
        plt.imshow(predictions[i, :, :, 0] * 127.5 + 127.5, cmap='gray')
        plt.axis('off')

    plt.savefig(os.path.join(args.out, f'image_at_epoch_{epoch:04d}.png'))
    plt.close(fig)


if __name__ == "__main__":
    started = time.perf_counter()
    train(train_dataset, EPOCHS)
    seconds = time.perf_counter() - started
    samples = np.concatenate([generator(tf.random.normal([1000, noise_dim]), training=False)
                              .numpy() for _ in range(10)])
    np.save(os.path.join(args.out, "samples.npy"), samples)
    report(epoch_seconds=epoch_seconds, seconds=seconds, samples=len(samples),
           framework_version=tf.__version__)
