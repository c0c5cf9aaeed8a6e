import json
import os
import sys


class Inventory:
    """A small in-memory inventory of items with quantities and prices."""

    def __init__(self):
        self.items = {}

    def add(self, name, quantity, price):
        if quantity <= 0:
            raise ValueError("quantity must be positive")
        if name in self.items:
            self.items[name]["quantity"] += quantity
        else:
            self.items[name] = {"quantity": quantity, "price": price}

    def remove(self, name, quantity):
        if name not in self.items:
            raise KeyError(name)
        item = self.items[name]
        if quantity > item["quantity"]:
            raise ValueError("not enough items")
        item["quantity"] -= quantity
        if item["quantity"] == 0:
            del self.items[name]

    def total_value(self):
        total = 0.0
        for name, item in self.items.items():
            total += item["quantity"] * item["price"]
        return total

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.items, f, indent=2)

    def load(self, path):
        if not os.path.exists(path):
            return
        with open(path) as f:
            self.items = json.load(f)


def main(argv):
    inventory = Inventory()
    inventory.add("apple", 10, 0.5)
    inventory.add("pear", 4, 0.75)
    inventory.remove("apple", 3)
    print("total value:", inventory.total_value())
    if len(argv) > 1:
        inventory.save(argv[1])


if __name__ == "__main__":
    main(sys.argv)
