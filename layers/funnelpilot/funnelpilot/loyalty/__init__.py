"""Customers' own rhythm: ``customer.repurchase_due`` when their next order is due and
``customer.lapsed`` when it never came (``repurchase``); the shipped ``repurchase`` and
``winback`` funnels start on them."""
