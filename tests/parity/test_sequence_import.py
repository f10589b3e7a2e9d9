"""Sequence models imported in one call from live PyTorch and Keras models, with reports.

PyTorch: the examples' ``mnist_rnn`` ``Net`` (an LSTM's output tuple, its last step, and
``Dropout2d`` on features), an ``nn.TransformerEncoder`` classifier, and a two-layer
bidirectional LSTM. Keras: a functional model of hand-written Transformer encoder blocks
(a graph import), and a masked bidirectional LSTM.
"""

import numpy as np
import pytest

from fnlearn import nn, parity

pytestmark = pytest.mark.parity


def mnist_rnn_net(torch):
    """PyTorch examples' ``mnist_rnn/main.py`` ``Net``, as the example writes it."""
    F = torch.nn.functional

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(input_size=28, hidden_size=64, batch_first=True)
            self.batchnorm = torch.nn.BatchNorm1d(64)
            self.dropout1 = torch.nn.Dropout2d(0.25)
            self.dropout2 = torch.nn.Dropout2d(0.5)
            self.fc1 = torch.nn.Linear(64, 32)
            self.fc2 = torch.nn.Linear(32, 10)

        def forward(self, input):
            input = input.reshape(-1, 28, 28)
            output, hidden = self.rnn(input)
            output = output[:, -1, :]
            output = self.batchnorm(output)
            output = self.dropout1(output)
            output = self.fc1(output)
            output = F.relu(output)
            output = self.dropout2(output)
            output = self.fc2(output)
            output = F.log_softmax(output, dim=1)
            return output

    return Net()


def test_mnist_rnn_net_imports(torch, record):
    torch.manual_seed(0)
    net = mnist_rnn_net(torch)
    with torch.no_grad():  # running statistics away from their initial 0 and 1
        net.train()
        for _ in range(3):
            net(torch.randn(32, 1, 28, 28) * 2 + 0.5)
    imported = parity.from_torch(net, (1, 28, 28))
    record("report", str(imported.report))
    assert imported.report.passed
    kinds = [layer.kind for layer in imported.model.children]
    assert kinds == ["reshape", "lstm", "batch_norm", "dropout", "dense", "relu", "dropout",
                     "dense", "log_softmax"]
    lstm = imported.model.children[1]
    assert lstm.config["return_sequences"] is False and lstm.config["convention"] == "torch"
    # Dropout2d on (N, C) features drops single elements in PyTorch 2.13: plain dropout.
    assert [imported.model.children[i].config["rate"] for i in (3, 6)] == [0.25, 0.5]
    # Layers are named after the modules (the graph importer's names).
    assert imported.model_state["batchnorm"]["mean"].std() > 0


def test_transformer_encoder_classifier_imports(torch, record):
    tnn = torch.nn

    class Classifier(tnn.Module):
        def __init__(self):
            super().__init__()
            self.embed = tnn.Linear(28, 32)
            layer = tnn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, activation="gelu",
                                                batch_first=True, norm_first=True)
            self.encoder = tnn.TransformerEncoder(layer, 2, norm=tnn.LayerNorm(32),
                                                  enable_nested_tensor=False)
            self.head = tnn.Linear(32, 10)

        def forward(self, x):
            x = self.encoder(self.embed(x))
            return self.head(x.mean(dim=1))

    torch.manual_seed(0)
    imported = parity.from_torch(Classifier(), (12, 28))
    record("report", str(imported.report))
    assert imported.report.passed
    assert [layer.kind for layer in imported.model.children] == [
        "dense", "transformer_encoder", "transformer_encoder", "layer_norm",
        "global_avg_pool1d", "dense"]
    block = imported.model.children[1].config
    assert (block["norm_first"], block["activation"], block["dropout"]) == (True, "gelu", 0.1)


def test_post_norm_encoder_layers_time_major_import(torch, record):
    tnn = torch.nn
    torch.manual_seed(1)
    model = tnn.Sequential(tnn.Linear(6, 8), tnn.TransformerEncoderLayer(8, 2, 16),
                           tnn.TransformerEncoderLayer(8, 4, 16, activation="gelu"))
    imported = parity.from_torch(model, (5, 6))
    record("report", str(imported.report))
    assert imported.report.passed
    assert imported.model.children[1].config["time_major"] is True


def test_stacked_bidirectional_lstm_imports(torch, record):
    tnn = torch.nn

    class Tagger(tnn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = tnn.LSTM(5, 6, num_layers=2, bidirectional=True, dropout=0.2,
                                batch_first=True)
            self.out = tnn.Linear(12, 3)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.out(y[:, -1])

    torch.manual_seed(2)
    imported = parity.from_torch(Tagger(), (9, 5))
    record("report", str(imported.report))
    assert imported.report.passed
    assert [layer.kind for layer in imported.model.children] == [
        "bidirectional", "dropout", "bidirectional", "take_step", "dense"]


def test_keras_functional_transformer_blocks_import(keras, record):
    layers = keras.layers

    def post_norm_block(x):
        attention = layers.MultiHeadAttention(4, 8, dropout=0.1)(x, x)
        x = layers.LayerNormalization(epsilon=1e-5)(layers.Add()([x, layers.Dropout(0.1)(
            attention)]))
        h = layers.Dense(64, activation="relu")(x)
        h = layers.Dropout(0.1)(layers.Dense(32)(layers.Dropout(0.1)(h)))
        return layers.LayerNormalization(epsilon=1e-5)(layers.Add()([x, h]))

    def pre_norm_block(x):
        h = layers.LayerNormalization(epsilon=1e-6)(x)
        x = layers.Add()([x, layers.MultiHeadAttention(2, 16)(h, h, use_causal_mask=True)])
        h = layers.Dense(32)(layers.Dense(48, activation="gelu")(
            layers.LayerNormalization(epsilon=1e-6)(x)))
        return layers.Add()([x, h])

    inputs = keras.Input((10, 6))
    x = layers.Dense(32)(inputs)
    x = pre_norm_block(post_norm_block(x))
    outputs = layers.Dense(3)(layers.GlobalAveragePooling1D()(x))
    keras_model = keras.Model(inputs, outputs)
    imported = parity.from_keras(keras_model)
    record("report", str(imported.report))
    assert imported.report.passed
    # A graph import: each Keras layer is one fnlearn layer (self-attention called as
    # mha(x, x), use_causal_mask=True kept), the residual adds are Add layers.
    graph_layers = imported.model.config["graph"].layers
    attention = [layer.config for layer in graph_layers if layer.kind == "multi_head_attention"]
    assert [(a["num_heads"], a["causal"]) for a in attention] == [(4, False), (2, True)]
    assert sum(layer.kind == "add" for layer in graph_layers) == 4


def test_keras_masked_bidirectional_lstm_imports(keras, record):
    layers = keras.layers
    keras_model = keras.Sequential([
        keras.Input((7, 3)), layers.Masking(0.0),
        layers.Bidirectional(layers.LSTM(4, return_sequences=True)),
        layers.GRU(5), layers.Dense(2)])
    imported = parity.from_keras(keras_model)
    assert imported.report.passed
    assert imported.model.children[0].config["mask_value"] == 0.0
    x = np.random.default_rng(0).normal(size=(4, 7, 3)).astype(np.float32)
    x[1, 3:] = 0.0  # padding the mask skips, in Keras and in the import
    expected = keras_model(x).numpy()
    result = parity.compare("padded batch", np.asarray(
        nn.apply(imported.model, imported.params, x)[0]), expected, rtol=1e-5, atol=1e-6)
    record("padded batch", f"max rel error {result.max_rel_error:.1e}")
    assert result.passed, str(result)


def test_unsupported_sequence_settings_are_named(torch, keras):
    class UsesState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.GRU(3, 4, batch_first=True)

        def forward(self, x):
            _, h = self.rnn(x)
            return h[0]

    with pytest.raises(ValueError, match="item 1 of 'rnn' .* is used: only the output"):
        parity.from_torch(UsesState(), (5, 3))
    embedded = keras.Sequential([keras.Input((5,)), keras.layers.Embedding(10, 4,
                                                                           mask_zero=True),
                                 keras.layers.LSTM(3)])
    with pytest.raises(ValueError, match="mask_zero=True: fnlearn's recurrent layers take their "
                                         "mask explicitly"):
        parity.from_keras(embedded)


def test_port_rnn_experiment_trains_in_torch_then_in_fnlearn(torch, tmp_path, capsys):
    from experiments import port_rnn

    results = port_rnn.main(["--limit", "512", "--test-limit", "500", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert results["report_passed"] and "(ok: tolerance 1e-05" in out
    # The import computes what PyTorch computed: the same predictions on the test images.
    assert abs(results["imported_test_accuracy"] - results["torch_test_accuracy"]) < 1e-6
    assert results["layers"][:3] == ["reshape", "lstm", "batch_norm"]
    assert (tmp_path / "report.json").exists()
