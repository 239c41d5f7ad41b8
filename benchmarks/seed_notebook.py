"""The seed notebook's data and training cells (bussmann-mod-addition-code), as a script.

    python benchmarks/seed_notebook.py [epochs]    # default 2000, the notebook's num_epochs

Kept as written (its variable names and its spelling included): one-hot float inputs, autograd,
`torch.optim.AdamW`, `.item()` every step, validation and a print every epoch. Only the model
class is cut to what training uses (the fit and replacement methods are not timed), and the
epoch count is an argument so that `bench_train.py` can time it at two lengths.
"""

import sys

import numpy as np
import torch

torch.manual_seed(1337)
np.random.seed(1337)

# Check if CUDA is available, else use CPU
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# define the dataset for modular addition
p = 113
data_set = np.zeros((p*p, 2*p))
labels = np.zeros((p*p, p))
for number1 in range(p):
  for number2 in range(p):
    data_set[number1*p + number2][number1] = 1
    data_set[number1*p + number2][number2+p] = 1
    labels[number1*p + number2][(number1 + number2) % p] = 1

# shuffle the dataset
shuffle = np.random.permutation(p*p)
data_set = data_set[shuffle]
labels = labels[shuffle]

# divide in train and validation set
train_proportion = 0.8
train_data = data_set[:int(train_proportion*p*p)]
train_labels = labels[:int(train_proportion*p*p)]
val_data = data_set[int(train_proportion*p*p):]
val_labels = labels[int(train_proportion*p*p):]

# convert to tensors
train_data = torch.from_numpy(train_data).float().to(device)
train_labels = torch.from_numpy(train_labels).float().to(device)
val_data = torch.from_numpy(val_data).float().to(device)
val_labels = torch.from_numpy(val_labels).float().to(device)


class MLP(torch.nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super(MLP, self).__init__()
        self.fc1 = torch.nn.Linear(input_size, hidden_size, bias=False)
        self.fc2 = torch.nn.Linear(hidden_size, output_size, bias=False)

    def forward(self, x, val=False):
        pre_relu = self.fc1(x)
        post_relu = torch.nn.functional.relu(pre_relu)
        x = self.fc2(post_relu)
        return x, pre_relu, post_relu


# define the training loop
def train(model, train_data, train_labels, val_data, val_labels, epochs, batch_size, lr):
    optimzer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.5)
    loss_fn = torch.nn.CrossEntropyLoss()

    train_loss_values = []
    val_loss_values = []
    train_acc_values = []
    val_acc_values = []

    running_train_loss = 0
    print(epochs)
    for epoch in range(epochs):
        model.train()
        correct_train_preds = 0
        total_train_preds = 0
        for batch in range(0, len(train_data), batch_size):
            optimzer.zero_grad()
            output, pre_relu, post_relu = model(train_data[batch:batch+batch_size])
            loss = loss_fn(output, torch.argmax(train_labels[batch:batch+batch_size], axis=1)) #+ 0.0000001*l1_norm
            running_train_loss += loss.item()
            preds = torch.argmax(output, axis=1)
            correct_train_preds += (preds == torch.argmax(train_labels[batch:batch+batch_size], axis=1)).sum().item()
            total_train_preds += len(preds)
            loss.backward()
            optimzer.step()
        model.eval()


        output, _, _ = model(val_data, val=True)
        val_loss = loss_fn(output, torch.argmax(val_labels, axis=1)).item()
        val_preds = torch.argmax(output, axis=1)
        correct_val_preds = (val_preds == torch.argmax(val_labels, axis=1)).sum().item()
        total_val_preds = len(val_preds)
        avg_train_loss = running_train_loss / (len(train_data) / batch_size)
        train_acc = correct_train_preds / total_train_preds
        val_acc = correct_val_preds / total_val_preds
        train_loss_values.append(avg_train_loss)
        val_loss_values.append(val_loss)
        train_acc_values.append(train_acc)
        val_acc_values.append(val_acc)

        print("Epoch: {} | Train loss: {} | Validation loss: {} | Train accuracy: {} | Validation accuracy: {}".format(epoch, avg_train_loss, val_loss, train_acc, val_acc))
        running_train_loss = 0
    return model, train_loss_values, val_loss_values, train_acc_values, val_acc_values


# train the model
model = MLP(2*p, 100, p).to(device)
num_epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
model, train_loss_values, val_loss_values, train_acc_values, val_acc_values = train(model, train_data, train_labels, val_data, val_labels, num_epochs, 128, 0.003)
