"""The read path: the Store a model server holds, one table object per strategy behind one
interface, request validation, the executor that runs ``lookup_many`` on worker threads, and the
plan data they serve. It never imports the tuning layer (``bandstore.tune``)."""

from bandstore.serve.plan import Plan, TablePlan
from bandstore.serve.store import Store, TableInfo, create, open

__all__ = ["Plan", "Store", "TableInfo", "TablePlan", "create", "open"]
