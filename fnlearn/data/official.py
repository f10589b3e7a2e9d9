"""The official MNIST and Fashion-MNIST files: their sha256 digests and the mirrors serving them.

Both datasets are checked on the uncompressed bytes (any gzip of the official data passes);
the archives' own digests, as tensorflow-datasets registers them, are kept for files that
arrive as the official ``.gz`` themselves.
"""

#: sha256 of the uncompressed official MNIST files. Hashing after decompression makes the
#: check independent of how a mirror gzipped them.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
#: sha256 of the official MNIST .gz files, as tensorflow-datasets 4.9.10 records them
#: (tensorflow_datasets/url_checksums/mnist.txt).
MNIST_ARCHIVE_SHA256 = {
    "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
#: sha256 of the official Fashion-MNIST .gz files, as tensorflow-datasets 4.9.10 records
#: them (tensorflow_datasets/url_checksums/fashion_mnist.txt).
FASHION_MNIST_ARCHIVE_SHA256 = {
    "train-images-idx3-ubyte": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
#: sha256 of the uncompressed official Fashion-MNIST files. Established offline from
#: Debian's dataset-fashion-mnist (0.0~git20200523.55506a9-1): its packaging rewrote each
#: gzip header, dropping the file name and the timestamp, and nothing else. Putting back the
#: name and the original timestamp (1504176606 for train-\*, 1504176627 for t10k-\*) rebuilds,
#: byte for byte, the four archives whose size and sha256 tensorflow-datasets registers
#: (above); these are the digests of their contents (tests/test_data.py rebuilds and checks
#: them).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
#: Public mirrors of the MNIST .gz files, in order: tensorflow-datasets', torchvision's.
MNIST_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
#: Public mirrors of the Fashion-MNIST .gz files, in order.
FASHION_MNIST_MIRRORS = (
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
