"""Instruction routing: the paper's paraphrases, the original InstructCV prompt files' phrasings, our own."""

import pytest

from icv_deploy.errors import InstructionError
from icv_deploy.tasks.encodings import TASKS
from icv_deploy.tasks.routing import EXAMPLES, Route, route

# The routing table (the paper's Table 3 and Figure 1 instructions).
PAPER = [
    ("Segment the cat.", "segmentation", "cat"),
    ("Can you help me segment the cat?", "segmentation", "cat"),
    ("Highlight the image parts corresponding to the cat.", "segmentation", "cat"),
    ("Please highlight the image segment containing the cat.", "segmentation", "cat"),
    ("Which image segments contain the cat?", "segmentation", "cat"),
    ("Hi InstructCV, please segment all trees", "segmentation", "trees"),
    ("Highlight all trees around Stata", "segmentation", "trees around Stata"),
    ("Segment Berkeley's Sather Gate", "segmentation", "Berkeley's Sather Gate"),
    ("Detect Berkeley's Sather Tower", "detection", "Berkeley's Sather Tower"),
    ("Detect MIT\u2019s great dome", "detection", "MIT's great dome"),
    ("Create a monocular depth map", "depth", None),
    ("Create a depth map for Stata Center", "depth", "Stata Center"),
]

# Our own phrasings, plus some from the original repository's paraphrased prompt lists.
OWN = [
    # segmentation
    ("segment the dog", "segmentation", "dog"),
    ("SEGMENT THE DOG!!!", "segmentation", "DOG"),
    ("  Segment   the   dog  ", "segmentation", "dog"),
    ("Divide the sky", "segmentation", "sky"),
    ("Perform semantic segmentation on the road", "segmentation", "road"),
    ("Segmentation of the person, please", "segmentation", "person"),
    ("Could you segment every person in this image?", "segmentation", "person"),
    ("Mask out the car", "segmentation", "car"),
    ("Give me a mask of the horse", "segmentation", "horse"),
    ("Highlight the pixels belonging to the bicycle", "segmentation", "bicycle"),
    ("Which pixels belong to the sheep?", "segmentation", "sheep"),
    ("Show the regions covered by grass", "segmentation", "grass"),
    ("Isolate the bottle from the background", "segmentation", "bottle"),
    ("Outline the sofa in the picture", None, "sofa"),  # boxes or a mask: the painting decides
    ("Cut out the cat", "segmentation", "cat"),
    ("Segment the hills in the distance", "segmentation", "hills in the distance"),
    ("Segment the man with the hat", "segmentation", "man with the hat"),
    ("Hello! Please segment both cats.", "segmentation", "cats"),
    # detection
    ("Detect the dog", "detection", "dog"),
    ("detection of cars", "detection", "cars"),
    ("Please help me detect Buzz.", "detection", "Buzz"),
    ("Draw a bounding box around the bird", "detection", "bird"),
    ("Put boxes on all the cars", "detection", "cars"),
    ("Where is the dog?", "detection", "dog"),
    ("Where's Waldo?", "detection", "Waldo"),
    ("Show me where the cat is", "detection", "cat"),
    ("Locate the car in this image", "detection", "car"),
    ("Find the tennis ball", "detection", "tennis ball"),
    ("Identify the location of the dog.", "detection", "dog"),
    ("Discern the dog's whereabouts.", "detection", "dog"),
    ("Determine the existence of the dog.", "detection", "dog"),
    ("Pinpoint the dog's whereabouts.", "detection", "dog"),
    ("I need assistance in detecting the dog using a computer vision algorithm.", "detection", "dog"),
    ("A computer vision algorithm could help me detect the presence of a dog.", "detection", "dog"),
    ("Can you spot the dog in this picture? I'm trying to find the dog that's hiding here.", "detection", "dog"),
    ("See if you can detect the four-legged creature in this picture. The dog might be hidden.", "detection",
     "four-legged creature"),
    ("By utilizing a computer vision algorithm, I hope to detect the dog that is currently hiding in the bushes.",
     "detection", "dog"),
    # depth
    ("Estimate the depth of this image", "depth", None),
    ("estimate depth", "depth", None),
    ("Predict the relative depth of objects in the image.", "depth", None),
    ("Determine the depth of the image by approximating.", "depth", None),
    ("Assess the depth of the image through estimation.", "depth", None),
    ("Approximate the depth of the image based on available information.", "depth", None),
    ("Make an estimation of the image's depth.", "depth", None),
    ("Calculate the distance between objects in the image.", "depth", None),
    ("Estimate the spatial layout of the scene from the image.", "depth", None),
    ("Infer the 3D structure of the scene", "depth", None),
    ("How far away are things in this photo?", "depth", None),
    ("Compute the disparity map", "depth", None),
    ("Create a depth map for the kitchen", "depth", "kitchen"),
    ("Estimate the depth of the Golden Gate Bridge", "depth", "Golden Gate Bridge"),
    # "here" and "for this image" say where, not what (the phrasing grammar's instructions)
    ("Where is the dog here?", "detection", "dog"),
    ("Could you segment every dog shown here?", "segmentation", "dog"),
    ("Give me the segmentation of the dog for this image.", "segmentation", "dog"),
    ("Return the bounding box of the Sather Tower for the photo!", "detection", "Sather Tower"),
    ("Segment the Hereford cow", "segmentation", "Hereford cow"),
]

CLASSIFICATION = [
    ("Show red if the image contains a dog, otherwise show green", "dog", "red", "green"),
    ("Show blue if the picture has a cat, otherwise show black", "cat", "blue", "black"),
    ("Display white if the image contains a horse, else display black.", "horse", "white", "black"),
    ("show YELLOW if there is a bird, otherwise show Purple", "bird", "yellow", "purple"),
    ("Show cyan if there exists a bus, else show magenta.", "bus", "cyan", "magenta"),
    ("If the cat is present, indicate orange; otherwise, use pink instead.", "cat", "orange", "pink"),
    ("In case of a dog, mark yellow, otherwise show black.", "dog", "yellow", "black"),
    ("Indicate green when a zebra is found, otherwise show red.", "zebra", "green", "red"),
    ("If there's a giraffe, show brown, otherwise display gray.", "giraffe", "brown", "gray"),
    ("When there is a sheep, display white, otherwise display grey", "sheep", "white", "grey"),
    ("Paint the image red if it contains a car, otherwise paint it blue", "car", "red", "blue"),
    ("Red if there is a boat, otherwise green", "boat", "red", "green"),
    ("Does the image contain a dog? If yes, show red, otherwise show green.", "dog", "red", "green"),
    ("Show a red block if you see a tiger, otherwise a black block", "tiger", "red", "black"),
    ("Show the colour blue if the photo shows a lion; otherwise show the colour white", "lion", "blue", "white"),
    ("Is there a dog here? If there is, red, else, green", "dog", "red", "green"),
    ("Red if there is a horse shown here, green if not.", "horse", "red", "green"),
]


@pytest.mark.parametrize("instruction,task,category", PAPER + OWN)
def test_routes(instruction, task, category):
    assert route(instruction) == Route(task, category, decided_by="text" if task else None)


@pytest.mark.parametrize("instruction,category,present,absent", CLASSIFICATION)
def test_classification(instruction, category, present, absent):
    assert route(instruction) == Route("classification", category, present, absent)


def test_enough_phrasings_per_task():
    phrasings = PAPER + OWN + [(c[0], "classification", c[1]) for c in CLASSIFICATION]
    per_task = {task: sum(p[1] == task for p in phrasings) for task in TASKS}
    assert len(OWN) + len(CLASSIFICATION) >= 40 and min(per_task.values()) >= 10, per_task


def test_examples_route_to_their_task():
    assert set(EXAMPLES) == set(TASKS)
    for task, examples in EXAMPLES.items():
        for example in examples:
            assert route(example).task == task


@pytest.mark.parametrize("instruction", ["Make it look like a painting", "Tell me a joke", "What a lovely day",
                                         "Describe the image", "Write a poem about trees", "?!"])
def test_no_task_is_an_error_listing_examples(instruction):
    with pytest.raises(InstructionError) as info:
        route(instruction)
    message = str(info.value)
    assert "\n" not in message and "no task fits" in message
    for task in TASKS:
        assert f'{task}: "{EXAMPLES[task][0]}"' in message


@pytest.mark.parametrize("instruction", ["", "   ", "\n\t", None])
def test_empty_instruction(instruction):
    with pytest.raises(InstructionError, match="empty"):
        route(instruction)


def test_unknown_colour_is_named():
    with pytest.raises(InstructionError, match="'teal'"):
        route("Show teal if the image contains a dog, otherwise show green")
    with pytest.raises(InstructionError, match="must differ"):
        route("Show gray if there is a cat, otherwise show grey")


def test_segmentation_without_object_is_an_error():
    with pytest.raises(InstructionError, match="does not say what"):
        route("Segment this image")


def test_or_in_condition_is_not_an_else():
    # "a cat or a dog" must not be read as "otherwise <colour>".
    found = route("Show red if there is a cat or a dog, otherwise show green")
    assert (found.color_if_present, found.color_if_absent, found.category) == ("red", "green", "cat or a dog")


@pytest.mark.parametrize("instruction,task,category", [
    ("cat", "segmentation", "cat"),
    ("the cat", "detection", "cat"),
    ("Detect the dog", "segmentation", "dog"),           # another task's rule still gives the category
    ("Segment the dog", "depth", "dog"),
    ("Hi InstructCV, please the big tree", "segmentation", "big tree"),
    ("Create a monocular depth map", "depth", None),
    ("dog", "classification", "dog"),
    ("Show red if there is a cat, otherwise green", "classification", "cat"),
])
def test_forced_task(instruction, task, category):
    found = route(instruction, task=task)
    assert (found.task, found.category, found.decided_by) == (task, category, "forced")
    if task == "classification":
        assert found.color_if_present and found.color_if_absent


def test_forced_classification_keeps_named_colours_and_defaults_otherwise():
    assert route("Show red if there is a cat, otherwise green", task="classification").color_if_absent == "green"
    assert route("cat", task="classification") == Route("classification", "cat", "blue", "black", "forced")


def test_unknown_forced_task():
    with pytest.raises(InstructionError, match="unknown task"):
        route("Segment the cat", task="caption")


def test_undecided_route_is_decided_by_the_painting():
    found = route("Show me the cat")
    assert found.undecided and found.decided_by is None and found.category == "cat"
    assert found.decided("detection") == Route("detection", "cat", decided_by="painted")
    assert found.decided("classification") == Route("classification", "cat", "blue", "black", "painted")
    assert not route("Segment the cat").undecided


def test_classification_category_is_never_leftover_words():
    found = route("Paint it yellow if there is a toaster, and purple if not")
    assert (found.category, found.color_if_present, found.color_if_absent) == ("toaster", "yellow", "purple")
    with pytest.raises(InstructionError, match="does not say what to look for"):
        route("Show red if it contains nothing, otherwise green")
