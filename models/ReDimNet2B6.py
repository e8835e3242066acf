"""ReDimNet2-B6 (models/ReDimNet2Family.py; stage table SIZES["B6"]): the authors' size B6, 72 mel bins."""
from models.ReDimNet2Family import REDIMNET2_OPTIONS, redimnet2

OPTIONS = dict(REDIMNET2_OPTIONS)
MainModel = redimnet2("B6")
