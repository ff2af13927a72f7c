"""Region Proposal Network (paper sec. 3.1): head, anchor labels, loss, proposals."""
from model.rpn.head import RPNHead, objectness_probability
from model.rpn.loss import rpn_loss
from model.rpn.network import RegionProposalNetwork, RPNOutput
from model.rpn.proposals import generate_proposals
from model.rpn.targets import label_anchors

__all__ = [
    "RPNHead",
    "RPNOutput",
    "RegionProposalNetwork",
    "generate_proposals",
    "label_anchors",
    "objectness_probability",
    "rpn_loss",
]
