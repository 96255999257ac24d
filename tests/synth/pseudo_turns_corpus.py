"""A planted set for pseudo multi-turn detection (`sftlab data turns --detect-pseudo`), in English and Chinese.

Written for sftlab's tests (no outside text). Each language has 8 topic families of 3 dialogues; the dialogues of a
family share the family's vocabulary (cooking, money, code, ...), so a splice is not a jump between unrelated
worlds. `planted(lang)` returns (records, ids of the spliced ones): every dialogue as written (coherent), and per
dialogue one splice = its first exchange followed by the later exchanges of the next dialogue of the same family
(what gluing two conversations of one source together gives). 24 coherent + 24 spliced per language.
"""

from __future__ import annotations

from typing import Any

Dialogue = list[tuple[str, str]]  # exchanges: (user, assistant)

EN: dict[str, list[Dialogue]] = {
    "cooking": [
        [("How do I keep my sourdough starter alive?",
          "A sourdough starter needs regular feeding. At room temperature, feed it equal weights of flour and water "
          "once a day, and discard about half of the starter before each feeding so the jar doesn't overflow and "
          "the yeast always has fresh flour. If you only bake once a week, keep the starter in the fridge and feed "
          "it once a week instead."),
         ("It smells like nail polish remover. Is that bad?",
          "No, that acetone smell is common and just means the starter is hungry: the yeast and bacteria have run "
          "out of flour and produce acetone-like compounds. Feed it more often, or use more flour and water "
          "relative to the starter for a few days. Once it gets enough food, the smell goes back to a pleasant "
          "sour, yeasty one."),
         ("When is it ready to use for a loaf?",
          "Use the starter at its peak, usually 4 to 8 hours after a feeding, when it has doubled in the jar and "
          "is full of bubbles. If you wait too long it collapses and the loaf rises less. A quick test: drop a "
          "spoonful of starter into water; if it floats, it has enough gas to leaven your bread.")],
        [("What hydration should Neapolitan pizza dough have?",
          "Neapolitan pizza dough is usually made at around 60 to 65 percent hydration, that is 600 to 650 g of "
          "water per kilo of 00 flour. Add about 2.5 percent salt and very little yeast, since the dough ferments "
          "for a long time. Beginners often find 62 percent easiest to knead and shape."),
         ("Can I let it rise in the fridge?",
          "Yes, and it usually makes better pizza. A cold ferment of 24 to 72 hours lets the dough develop more "
          "flavour and relaxes the gluten, so the dough balls are easier to stretch into thin bases. Take them out "
          "of the fridge about two hours before baking so the dough warms up and doesn't tear."),
         ("My home oven only reaches 250°C. Any tips?",
          "A home oven can still make a good Neapolitan-style pizza. Preheat a pizza steel or stone on the top rack "
          "for 45 minutes so it stores as much heat as possible, then bake the pizza on it and finish it under the "
          "broiler for a minute to char the crust. Stretch the dough a little thinner than usual, because the "
          "pizza bakes longer than in a wood-fired oven.")],
        [("How long should I simmer chicken stock?",
          "Simmer chicken stock gently for 3 to 4 hours so the bones release their gelatin and flavour, or cook "
          "it for about 90 minutes in a pressure cooker. Keep the pot just below a boil, with only a few bubbles "
          "breaking the surface. That slow simmer gives a rich, clear stock."),
         ("Why did mine turn cloudy?",
          "Cloudy stock almost always means it boiled. A rolling boil emulsifies the fat and breaks proteins into "
          "tiny particles that stay suspended in the liquid. Next time skim the foam in the first half hour, keep "
          "the heat low, and strain the finished stock through a fine sieve; cloudy stock is still safe and tasty "
          "in soups."),
         ("How long does it keep?",
          "Homemade chicken stock keeps about 4 days in the fridge and around 6 months in the freezer. Cool it "
          "quickly before you put it away, and freeze the stock in small portions, such as ice cube trays or "
          "half-liter containers, so you only thaw what a recipe needs.")],
    ],
    "python": [
        [("How do I sort a list of dictionaries by a key in Python?",
          "Use the built-in sorted() with a key function: sorted(people, key=lambda d: d['age']) returns a new "
          "list of the dictionaries ordered by age. operator.itemgetter('age') does the same and is slightly "
          "faster. If you want to sort the original list in place, call people.sort(key=itemgetter('age'))."),
         ("And in descending order?",
          "Pass reverse=True: sorted(people, key=itemgetter('age'), reverse=True) puts the oldest first. Python's "
          "sort is stable, so dictionaries with the same age keep their original relative order, which also works "
          "in reverse."),
         ("What if some dictionaries don't have that key?",
          "Then d['age'] raises a KeyError in the key function. Use d.get('age') with a default instead, for "
          "example sorted(people, key=lambda d: d.get('age', 0)), so dictionaries without an age sort as 0. If "
          "they should go last, use key=lambda d: (d.get('age') is None, d.get('age') or 0).")],
        [("How do I read a large CSV file with pandas without running out of memory?",
          "Read the CSV in chunks: pd.read_csv('big.csv', chunksize=100_000) returns an iterator of DataFrames, "
          "and you process each chunk in a loop instead of loading the whole file. Also read only the columns you "
          "need with usecols, which often cuts memory use by half or more."),
         ("Can I also make the columns smaller?",
          "Yes, give read_csv explicit dtypes, for example dtype={'price': 'float32', 'city': 'category'}. "
          "pandas defaults to 64-bit numbers and Python strings, which are wasteful; a category column stores "
          "each distinct string once, which helps a lot for columns with repeated values like city names."),
         ("How do I combine the results at the end?",
          "Collect the result of each chunk, for example a filtered or aggregated DataFrame, in a list, and call "
          "pd.concat(results) once after the loop. Don't concatenate inside the loop: that copies all the "
          "accumulated data on every chunk. If you aggregated per chunk, run the groupby once more on the "
          "combined DataFrame.")],
        [("Should I use venv or conda for a new Python project?",
          "For a pure Python project, the built-in venv module with pip is usually enough: it ships with Python "
          "and keeps each project's packages separate. Conda is worth it when you need non-Python libraries, "
          "such as CUDA, GDAL or MKL, installed together with your packages, as is common in data science."),
         ("How do I make the environment reproducible for my team?",
          "Pin exact versions of every package in a lock file that lives in the repository. The simplest way "
          "is pip freeze > requirements.txt; tools like pip-tools or uv do it better by resolving and pinning "
          "the whole dependency tree from a short list of direct dependencies. Your teammates then recreate the "
          "same environment with one install command."),
         ("Should the environment folder go into git?",
          "No. The .venv folder is large, specific to your operating system and full of generated files, so add "
          "it to .gitignore. Commit only the lock file or requirements.txt, and everyone builds their own "
          "environment from it.")],
    ],
    "travel": [
        [("Is the Japan Rail Pass still worth it for a two-week trip?",
          "Since the big price increase in 2023, the Japan Rail Pass pays off only if you take several long "
          "Shinkansen rides, for example Tokyo to Hiroshima and back plus a trip north to Sendai or Aomori. For "
          "a classic Tokyo, Kyoto and Osaka route, single tickets are usually cheaper than the pass. Add up your "
          "planned train fares before you buy it."),
         ("Does it cover the Nozomi trains?",
          "Not by default. The Japan Rail Pass covers the Hikari and Kodama Shinkansen on the Tokaido line, which "
          "are only a little slower. Since 2023 you can ride the Nozomi and Mizuho trains with the pass if you "
          "buy a special supplement ticket for each ride."),
         ("Can I reserve seats with it?",
          "Yes, seat reservations on JR trains are free with the pass, and you can make as many as you like. "
          "Book them at a ticket machine in the station or at a JR ticket office; in peak seasons such as Golden "
          "Week or cherry blossom time, reserve Shinkansen seats a few days ahead.")],
        [("How many days do I need to drive Iceland's Ring Road?",
          "The Ring Road is about 1,300 km, so you could drive it in 7 days, but 10 to 12 days is much more "
          "comfortable. That leaves time for the waterfalls on the south coast, the Jökulsárlón glacier lagoon "
          "and the east fjords without spending the whole day in the car."),
         ("Do I need a 4x4 for it in September?",
          "Not for the Ring Road itself: it is paved all the way, and a normal car is fine in September. You "
          "need a 4x4 only for the F-roads into the highlands, and most of those close in early September anyway. "
          "Do check the road and weather conditions each morning, since autumn storms can close stretches of the "
          "road."),
         ("Where should I stay along the way?",
          "Accommodation along the Ring Road is spread thin outside Reykjavík, so book early. Guesthouses and "
          "farm stays in small towns such as Vík, Höfn and Egilsstaðir break the drive into good daily stages, "
          "and some farms along the road serve dinner, which helps because restaurants are far apart.")],
        [("What's the best way to see the Louvre in one day?",
          "Book a timed ticket for the Louvre online, enter through the Carrousel entrance to avoid the pyramid "
          "queue, and pick one or two wings instead of trying to see everything: the museum is huge. Friday "
          "evenings, when the Louvre stays open late, are usually the quietest time."),
         ("Is the Mona Lisa worth the queue?",
          "The Mona Lisa is small, behind glass and in the most crowded room of the Louvre, so expect only a short "
          "look from a distance. If you want to see it, go straight to the Salle des États at opening time. Then "
          "spend your time in the quieter Italian painting galleries nearby, which have masterpieces without the "
          "crowd."),
         ("Can I combine it with the Musée d'Orsay on the same day?",
          "It's possible: the Musée d'Orsay is a short walk from the Louvre across the Seine. But two big museums "
          "in one day is tiring, so see the Louvre in the morning, have lunch, and spend the afternoon with the "
          "Orsay's impressionists on the fifth floor. The Orsay is open late on Thursdays.")],
    ],
    "money": [
        [("Should I invest in an index fund or pick individual stocks?",
          "For most people a low-cost index fund is the better choice. It spreads your money over hundreds of "
          "companies, so one bad stock can't sink you, and studies show that most professional stock pickers fail "
          "to beat the index after fees. Picking individual stocks takes a lot of research and carries more "
          "risk."),
         ("What expense ratio counts as low?",
          "For a broad market index fund or ETF, an expense ratio of 0.03 to 0.2 percent a year is low. Above "
          "about 0.5 percent, the fees take a noticeable share of your return over decades: on a long-term "
          "investment, a 1 percent fee can cost a quarter of the final value."),
         ("Should I invest a lump sum or spread it over months?",
          "Investing a lump sum in the index fund at once does better about two thirds of the time, because "
          "markets tend to rise and money waiting in cash misses that growth. Spreading the investment over a "
          "few months is still reasonable if a sudden drop right after investing would scare you into selling.")],
        [("I have $8,000 of credit card debt. Where do I start?",
          "Start by listing every credit card with its balance and interest rate. Pay the minimum on all of them "
          "so you avoid late fees, then put every extra dollar toward the card with the highest interest rate "
          "first; this is called the avalanche method and saves the most interest. Stop using the cards while you "
          "pay the debt down."),
         ("Would a balance transfer card help?",
          "It can help a lot. A balance transfer card with a 0 percent offer for 15 to 21 months stops the "
          "interest on your credit card debt while you pay down the balance. Check the transfer fee, usually 3 "
          "to 5 percent of the amount, and make a plan to pay off the balance before the promotional rate ends."),
         ("Will that hurt my credit score?",
          "Applying for a new card causes a small, temporary dip in your credit score. But paying down your "
          "credit card balances lowers your credit utilization, the share of your credit limits you use, and "
          "that usually raises your score within a few months, more than making up for the application.")],
        [("How big should my emergency fund be?",
          "A common rule is three to six months of essential expenses in your emergency fund: rent, food, "
          "insurance, transport and minimum debt payments, not your full spending. If you are a freelancer or "
          "the only earner in your household, aim for the higher end, or even more."),
         ("Where should I keep that money?",
          "Keep the emergency fund in a high-yield savings account or a money market fund. The money earns some "
          "interest, can be withdrawn within a day when an emergency comes, and its value doesn't swing like "
          "stocks. Keep it separate from your everyday checking account so you aren't tempted to spend it."),
         ("Is it okay to use it for a vacation?",
          "No, the emergency fund is for real emergencies, such as losing your job, medical bills or an urgent "
          "car repair. A vacation is a planned expense, so save for it in a separate account. If you do dip into "
          "the emergency fund, refill it before you save for anything else.")],
    ],
    "fitness": [
        [("I can run 5k. How should I train for my first 10k?",
          "Going from 5k to 10k usually takes 6 to 8 weeks. Run three or four times a week, add about 10 percent "
          "to your weekly distance each week, and make one run a week a longer slow run that grows from 6 km "
          "toward 10 to 12 km. Keep the other runs short and easy."),
         ("Should the long run be fast?",
          "No, run the long run at an easy, conversational pace, slow enough that you could talk in full "
          "sentences. The long run builds endurance for the 10k distance; speed comes from one short interval "
          "session a week, such as 6 x 400 m a bit faster than your 5k race pace."),
         ("What should I do the week before the race?",
          "Taper: cut your running distance by about half in the last week, and keep a couple of short easy runs "
          "with a few quick strides so your legs stay fresh. Sleep well, and don't try new shoes, new food or a "
          "new breakfast on race day; use what worked on your long runs.")],
        [("My knees hurt when I do squats. What am I doing wrong?",
          "Knee pain during squats often comes from technique: your knees caving inward, your weight shifting "
          "onto your toes, or squatting deeper than your hip and ankle mobility allows. Film yourself squatting "
          "from the front and the side to see what your knees do."),
         ("How do I stop my knees from caving in?",
          "Cue yourself to push your knees out over your toes as you stand up from the squat. Strengthen your "
          "glutes, which hold the knees in line, with banded side steps, glute bridges and hip thrusts. And lower "
          "the weight on the bar until you can squat with your knees tracking cleanly, then build back up."),
         ("Should I wear knee sleeves?",
          "Knee sleeves keep the joint warm and many lifters find squats feel better with them, but they don't "
          "fix technique or a knee injury. If your knees still hurt after you lighten the load and correct your "
          "form, have a physiotherapist or sports doctor look at them.")],
        [("I wake up at 3 am every night and can't fall back asleep. Any advice?",
          "Waking in the night and lying awake is a common form of insomnia. Keep the same wake-up time every "
          "day, even on weekends, avoid caffeine after noon and alcohol in the evening, since alcohol makes sleep "
          "lighter in the second half of the night. If you're awake for more than 20 minutes, get up and read in "
          "dim light until you feel sleepy, then go back to bed."),
         ("Does exercise help with that?",
          "Yes, regular exercise makes sleep deeper and can reduce waking at night. Aerobic exercise such as "
          "brisk walking, cycling or running works well, but finish hard workouts at least three hours before "
          "bed. A walk in the morning light also helps set your body clock, so you get sleepy at the right time."),
         ("What about melatonin?",
          "A low dose of melatonin, 0.5 to 1 mg a few hours before bed, can help shift the timing of your sleep, "
          "for example with jet lag. It doesn't do much for waking up in the middle of the night, though. If the "
          "sleep problem lasts for months, ask a doctor about cognitive behavioural therapy for insomnia.")],
    ],
    "garden": [
        [("The lower leaves of my tomato plants are turning yellow. Why?",
          "Yellow leaves that start at the bottom of a tomato plant usually mean one of two things: a nitrogen "
          "shortage, as the plant moves nitrogen from old leaves to new growth, or early blight, a fungal disease. "
          "Look closely at the leaves: blight shows brown spots with rings like a target, while plain yellow "
          "leaves point to feeding."),
         ("They do have brown spots with rings.",
          "Then it's early blight on your tomato plants. Remove the spotted leaves and throw them away, not on "
          "the compost. Water the plants at the base instead of over the leaves, mulch the soil so spores don't "
          "splash up onto the lower leaves, and spray a copper fungicide if the blight keeps spreading."),
         ("Can I still eat the tomatoes?",
          "Yes, early blight attacks the leaves and stems of the tomato plant and doesn't make the fruit unsafe "
          "to eat. The tomatoes may ripen a bit smaller if the plant loses many leaves. Just discard any tomatoes "
          "that have dark, sunken spots near the stem.")],
        [("How do I grow basil indoors?",
          "Basil grows well indoors if it gets enough light. Put the pot in a south-facing window or under a grow "
          "light for 12 to 14 hours a day, use a well-draining potting mix in a pot with holes, and water the "
          "basil when the top centimeter of soil is dry. Keep it away from cold drafts."),
         ("It keeps getting tall and leggy.",
          "Tall, leggy basil is stretching toward the light, so first give it more light. Then pinch off the top "
          "pair of leaves just above a leaf node every week: the basil plant branches at that node and grows "
          "bushy instead of tall, and you get more leaves to harvest."),
         ("Should I let it flower?",
          "No, pinch the flower buds off as soon as they appear at the tips of the stems. Once basil flowers, "
          "the plant puts its energy into seeds, the leaves get bitter and it stops producing new growth. Keep "
          "harvesting from the top and the basil plant stays productive much longer.")],
        [("How do I start a compost pile in my backyard?",
          "Pick a shady spot in the backyard and mix green material, such as vegetable scraps, coffee grounds and "
          "grass clippings, with brown material, such as dry leaves, straw and cardboard. Use roughly one part "
          "green to two or three parts brown, and keep the compost pile as moist as a wrung-out sponge."),
         ("It smells bad. What went wrong?",
          "A rotten smell from a compost pile means too much wet green material and not enough air, so the pile "
          "has gone anaerobic. Add dry leaves or shredded cardboard to balance it, and turn the pile with a fork "
          "to let oxygen in. A healthy compost pile smells earthy, not sour or rotten."),
         ("How long until I can use it?",
          "A compost pile that you turn every week or two is ready in 2 to 4 months; a pile left alone takes "
          "about a year. Finished compost is dark, crumbly and smells like forest soil, and you can't recognise "
          "the scraps you put in. Spread it on your garden beds or mix it into potting soil.")],
    ],
    "home": [
        [("My kitchen faucet keeps dripping. Can I fix it myself?",
          "Usually yes, a dripping faucet is one of the easiest plumbing repairs. Turn off the water supply "
          "valves under the sink, take off the faucet handle, and replace the cartridge or the washer, depending "
          "on the faucet type. Take the old part to the hardware store so you buy a matching one."),
         ("How do I know which type I have?",
          "Look at how the faucet handle moves. A single lever that moves up and down and side to side is "
          "usually a cartridge or ceramic disc faucet; two separate handles that turn several times before the "
          "water stops often have compression washers. The brand name on the faucet helps you find the exact "
          "replacement part."),
         ("The handle screw is stuck. What now?",
          "A stuck handle screw is usually corroded or full of mineral deposits. Put a drop of penetrating oil "
          "on the screw, wait 15 minutes, and use a screwdriver that fits the screw head exactly so you don't "
          "strip it. Tapping the faucet handle gently with the screwdriver handle can loosen the deposits too.")],
        [("How much paint do I need for a 4 by 5 meter bedroom?",
          "The bedroom walls add up to about 18 m around and, with a 2.5 m ceiling, roughly 45 m² of wall, minus "
          "about 5 m² for the window and door. With two coats of paint at about 10 m² per liter, you need around "
          "8 liters of paint; buy 9 to have some left for touch-ups."),
         ("Do I need a primer?",
          "Use a primer before painting if you're covering a dark color, bare plaster, new drywall or patched "
          "spots, because the primer seals the surface and the paint then covers evenly. If the bedroom walls "
          "already have a similar light color in good condition, two coats of paint are enough without primer."),
         ("How do I get clean lines at the ceiling?",
          "For clean paint lines at the ceiling, use good painter's tape and press its edge down firmly with a "
          "putty knife so paint can't creep under it. Or cut in by hand with an angled brush, which is faster "
          "once you have practice. Remove the tape while the last coat of paint is still slightly wet.")],
        [("Can I mount a 65-inch TV on drywall?",
          "Yes, but only if you fasten the TV wall mount into the wooden studs behind the drywall. A 65-inch TV "
          "plus the mount weighs around 30 kg and levers away from the wall; plastic anchors in drywall alone "
          "won't hold that weight safely."),
         ("How do I find the studs?",
          "Use an electronic stud finder along the wall, or knock on the drywall and listen: it sounds hollow "
          "between studs and solid over them. Studs are usually 40 cm (16 inches) apart, center to center. "
          "Before you drill the mounting holes, confirm the stud with a small nail."),
         ("My studs aren't where I want the TV.",
          "Then use a TV mount with a wide wall plate or a sliding bracket, which lets you shift the TV sideways "
          "between the studs. Another option is to screw a plywood board across two studs and mount the TV on "
          "the board, which spreads the load along the wall.")],
    ],
    "pets": [
        [("How do I house-train a new puppy?",
          "House training a puppy is about routine. Take the puppy outside after every meal, nap and play "
          "session, always to the same spot, and praise it or give a treat right after it goes. Young puppies "
          "can't hold it long, so take yours out every one to two hours at first."),
         ("What if it has an accident inside?",
          "Don't punish the puppy for accidents; it won't understand and may start hiding to pee. Clean the spot "
          "with an enzyme cleaner, which destroys the smell that invites the puppy to go there again, and take "
          "it outside more often for a while."),
         ("Should I use a crate at night?",
          "Yes, a crate helps house training at night, because puppies avoid soiling the place where they sleep. "
          "Choose a crate just big enough for the puppy to stand up and turn around in. For the first weeks, "
          "expect to take the puppy outside once during the night.")],
        [("My cat hasn't eaten for a day. Should I worry?",
          "Yes, take it seriously: cats shouldn't go without food for more than a day or two, because fasting can "
          "cause hepatic lipidosis, a serious liver disease in cats. Watch her closely and call your vet if she "
          "still doesn't eat by tomorrow."),
         ("She's still drinking water and acts normal otherwise.",
          "That's reassuring, and it makes a serious illness less likely, but keep watching her. Warm her wet "
          "food slightly to make it smell stronger, which tempts many cats to eat. Also think about stress: a "
          "new pet, a move, visitors or a changed food brand often make a cat stop eating for a while."),
         ("What signs mean I should go to the vet today?",
          "Take your cat to the vet the same day if she vomits, hides, has a swollen or painful belly, strains "
          "in the litter box, or hasn't eaten anything for more than 24 hours. A male cat straining to pee is an "
          "emergency, because a blocked bladder can be fatal.")],
        [("Why is the water in my new aquarium cloudy?",
          "A white, milky cloud in a new aquarium is usually a bacterial bloom: free-floating bacteria multiply "
          "while the beneficial bacteria in the filter become established. It's harmless and the aquarium water "
          "clears on its own in one to two weeks; don't change all the water, that only restarts the bloom."),
         ("Should I add the fish now?",
          "Not yet. Wait until the aquarium's nitrogen cycle is complete: test the water every few days until "
          "ammonia and nitrite both read zero, which usually takes 4 to 6 weeks. Then add a few fish at a time, "
          "so the filter bacteria can keep up with the extra waste."),
         ("How often should I change the water after that?",
          "Once the fish are in, change about 20 to 25 percent of the aquarium water every week. Use a gravel "
          "vacuum to remove waste from the bottom at the same time, and treat the new tap water with a "
          "dechlorinator before it goes into the tank, since chlorine kills the filter bacteria.")],
    ],
}

ZH: dict[str, list[Dialogue]] = {
    "烹饪": [
        [("红烧肉怎么做才不油腻？",
          "想让红烧肉不油腻，关键是把肥肉里的油逼出来。选肥瘦相间的五花肉，切块后冷水下锅焯水，捞出洗净；再用小火把肉块"
          "煸到表面微黄出油，倒掉多余的油。之后炒糖色、加料酒和生抽，加热水没过肉块，小火慢炖一个小时左右。"),
         ("糖色总是炒糊怎么办？",
          "炒糖色是做红烧肉最容易失手的一步。锅里留少许油，放冰糖后全程用小火，不停搅动，冰糖化开后颜色变成枣红色、"
          "冒出细密的小泡时，马上下肉块翻炒上色。火太大或者等颜色发黑再下肉，糖色就会发苦，肉也会带苦味。"),
         ("最后汤汁怎么收浓？",
          "红烧肉炖到筷子能轻松扎透时，开大火收汁。收汁时要边收边翻动肉块，防止粘锅，让每块肉都均匀裹上汤汁。"
          "汤汁变得浓稠发亮、能挂在肉上，就可以关火出锅了，别收得太干，留一点汤汁拌饭很香。")],
        [("包饺子的面怎么和才筋道？",
          "饺子皮要筋道，面团要和得偏硬一些。用中筋面粉，面粉和水的比例大约二比一，水里加一小撮盐，盐能增加面筋的韧性。"
          "和成面团后盖上湿布醒二十到三十分钟，中间再揉两三次，醒好的面团光滑有弹性，擀出来的饺子皮就筋道。"),
         ("猪肉白菜馅怎么调才不出水？",
          "白菜水分大，是饺子馅出水的主要原因。白菜切碎后撒一点盐腌十分钟，用纱布把水分挤干再拌进肉馅。"
          "猪肉馅先分几次加花椒水，顺着一个方向搅打上劲，让肉馅吸饱水分；最后加入白菜，再淋一些油拌匀，"
          "油能把白菜包住，饺子馅就不容易出水了。"),
         ("煮的时候饺子老破皮是怎么回事？",
          "饺子煮破一般是因为饺子皮擀得太薄、馅包得太满，或者捏得不紧。煮饺子要等水大开再下锅，下锅后用勺背轻轻推一推，"
          "防止饺子粘在锅底；每次水开点一次凉水，点三次、饺子鼓起来浮在水面就熟了，这样煮饺子皮不容易破。")],
        [("在家蒸馒头，面发不起来是什么原因？",
          "馒头的面发不起来，常见原因有三个：酵母过期失效、化酵母的水太烫把酵母烫死，或者室温太低发酵太慢。"
          "用三十五度左右、摸着温热的水化开酵母，和好的面团盖上保鲜膜，放在温暖的地方发酵，冬天可以放进烤箱开发酵功能。"),
         ("怎么判断面发好了？",
          "发酵好的面团会涨到原来的两倍大左右。用手指蘸一点面粉在面团中间戳一个洞，洞口不回缩、也不塌陷，"
          "就说明面发好了；撕开面团，里面是均匀的蜂窝状组织。如果洞口很快回缩，说明还没发好，要再等一会儿。"),
         ("蒸出来表面不光滑、有点塌，怎么办？",
          "馒头表面不光滑、蒸完塌陷，多半是揉面排气不够或者二次发酵过度。发好的面要重新充分揉搓，"
          "揉到切开后切面没有大气孔再整形，整形后二次醒发十五分钟左右就上锅。蒸好后先关火焖三五分钟再开盖，"
          "避免馒头遇冷空气回缩，这样蒸出来的馒头表面光滑又暄软。")],
    ],
    "编程": [
        [("Python 里怎么按值对字典排序？",
          "Python 的字典可以用 sorted() 按值排序：sorted(d.items(), key=lambda kv: kv[1]) 会返回按值从小到大排好的"
          "键值对列表。如果还需要一个字典，用 dict() 把结果转回去就行，Python 3.7 以后字典会保持插入顺序，所以排序结果不会丢。"),
         ("如果要从大到小排呢？",
          "从大到小排序只需要给 sorted() 加上 reverse=True，比如 sorted(d.items(), key=lambda kv: kv[1], "
          "reverse=True)。也可以把 key 写成 lambda kv: -kv[1]，不过这种写法只适用于数字，值是字符串时还是用 reverse 参数。"),
         ("值相同的时候想再按键排序呢？",
          "可以让 key 函数返回一个元组，Python 会按元组的元素依次比较。比如 key=lambda kv: (-kv[1], kv[0])，"
          "先按值从大到小排，值相同的再按键从小到大排。这样对字典排序的结果是确定的，不会因为值相同而顺序随机。")],
        [("MySQL 查询很慢，怎么判断是不是没用上索引？",
          "可以在慢查询的 SQL 语句前面加上 EXPLAIN，看执行计划。重点看 type 列和 key 列：type 是 ALL 表示全表扫描，"
          "key 为空说明这条查询没有用到任何索引。另外 rows 列是 MySQL 估计要扫描的行数，数字很大通常就是慢的原因。"),
         ("我在 where 里对字段用了函数，有影响吗？",
          "有影响，而且是索引失效最常见的原因之一。对索引列用函数或者做计算，比如 WHERE DATE(create_time) = "
          "'2024-01-01'，MySQL 就没法利用 create_time 上的索引，只能全表扫描。应该改写成范围条件："
          "create_time >= '2024-01-01' AND create_time < '2024-01-02'，这样索引就能用上了。"),
         ("联合索引的顺序有讲究吗？",
          "有讲究。MySQL 的联合索引遵循最左前缀原则，查询条件必须从索引的第一列开始用，跳过第一列时整个联合索引都用不上。"
          "一般把最常用来过滤、区分度高的列放在联合索引的前面，范围查询的列放在后面。")],
        [("Git 怎么新建一个分支并切换过去？",
          "在 Git 里可以用 git checkout -b feature-login 新建分支并直接切换过去；新版本的 Git 推荐用 "
          "git switch -c feature-login，效果一样。新分支会从你当前所在的提交开始，建好后用 git branch 可以确认当前在哪个分支上。"),
         ("合并回主分支的时候有冲突怎么办？",
          "先切回主分支再执行 git merge feature-login。如果两个分支改了同一个文件的同一处，Git 会报冲突，"
          "并在文件里用 <<<<<<< 和 >>>>>>> 标出两个分支各自的修改。手动编辑文件保留正确的内容、删掉这些标记，"
          "然后 git add 这些文件，再 git commit，合并就完成了。"),
         ("合并完了这个分支还要留着吗？",
          "功能分支合并进主分支以后，一般可以删掉，保持分支列表干净。本地分支用 git branch -d feature-login 删除，"
          "Git 会检查它是否已经合并；远程分支用 git push origin --delete feature-login 删除。")],
    ],
    "旅行": [
        [("第一次去云南大理，玩几天比较合适？",
          "第一次去大理，一般安排四到五天比较从容：一天逛大理古城和崇圣寺三塔，一天环洱海，一天上苍山，"
          "再留一天去喜洲古镇和周边的村子。如果还想顺路去丽江或者香格里拉，要在大理之外再多留三四天。"),
         ("环洱海骑行一圈要多久？",
          "环洱海一圈大约一百三十公里，骑电动车的话一天能转完，早上出发、傍晚回到大理古城。骑自行车体力消耗比较大，"
          "建议只骑洱海西岸的生态廊道，或者双廊附近的一段，走走停停，拍照看海更舒服。"),
         ("住古城里面还是洱海边？",
          "看你更看重什么。住大理古城里面吃饭逛街都方便，晚上也热闹；想看洱海日出和海景，就住洱海边的才村、双廊一带，"
          "风景很好，但那边晚上比较安静，去古城要打车。很多人会两边各住两晚。")],
        [("去北京故宫要提前多久买门票？",
          "故宫现在实行实名预约，不卖现场票。门票在参观日前七天的晚上八点开售，平时一般不难买，但暑假、国庆和"
          "节假日的故宫门票很快就会卖完，最好一开售就在故宫博物院的官方网站或者小程序上预约。"),
         ("进去以后怎么逛比较好？",
          "故宫只能从南边的午门进、北边的神武门出。可以沿着中轴线依次看太和殿、中和殿、保和殿，再到乾清宫和御花园；"
          "时间够的话去东边的珍宝馆和钟表馆，这两个馆要另外买票。逛故宫至少留出半天时间，穿舒服的鞋。"),
         ("出了神武门附近还有什么可以去？",
          "出了故宫的神武门，正对面就是景山公园，爬到山顶的万春亭，可以俯瞰整个故宫的全景，下午光线好的时候拍照很漂亮。"
          "从景山再往西走一点就是北海公园，可以划船、看白塔，一起逛正好。")],
        [("高铁票买好了想改签，怎么操作？",
          "高铁票改签可以直接在 12306 的 App 上办：进入订单，找到要改的车票，点“改签”，选择新的日期、车次和座位，"
          "确认后就改好了。开车前都可以在网上改签，不过一张车票只能改签一次。"),
         ("改签要不要手续费？",
          "高铁票改签本身不收手续费。改签后的新票比原票贵，就补上差价；比原票便宜，就退还差额。"
          "需要注意的是，如果改签到的车次离开车不到八天，之后再退票时可能要按规定收取退票费。"),
         ("要是错过了车怎么办？",
          "错过了高铁也别着急，开车后当天还可以到火车站的人工窗口办理改签，改成当天其他有余票的车次。"
          "过了当天就不能改签了，只能按规定办理退票，会扣一部分退票费。")],
    ],
    "理财": [
        [("每个月工资剩两千块，适合做基金定投吗？",
          "每月结余两千块很适合做基金定投。定投是在固定的时间投入固定的金额，能分散买入的时点，不用自己判断什么时候该买。"
          "建议选费率低的宽基指数基金，比如沪深三百或者中证五百指数基金，先拿一部分钱定投，同时留好应急的钱。"),
         ("定投多久扣一次比较好？",
          "基金定投按月扣款还是按周扣款，长期下来收益差别不大。最省心的是把定投扣款日放在发工资之后的一两天，按月扣款，"
          "工资到账就自动投出去，不容易乱花。定投最重要的是坚持下去，而不是选哪一天扣款。"),
         ("跌了要不要停掉？",
          "基金下跌的时候反而是定投发挥作用的时候：同样的两千块能买到更多基金份额，把平均成本摊低，"
          "等市场回升时收益会更好。只要这笔钱几年内用不到，就不要因为短期下跌停止定投。")],
        [("手上有二十万，要不要提前还房贷？",
          "要不要提前还房贷，主要看房贷利率和你能拿到的投资收益。如果你的房贷利率在百分之四左右，而稳健理财的收益"
          "不到百分之三，提前还款更划算；但要先留出半年左右的生活费，别把二十万全部用来还贷款。"),
         ("提前还款是缩短年限好还是减少月供好？",
          "提前还房贷时，选择缩短还款年限，节省的贷款利息更多；选择减少月供，每个月的还款压力会小一些，但总利息省得少。"
          "如果你的收入稳定，月供压力不大，一般建议选缩短年限。"),
         ("银行会收违约金吗？",
          "提前还房贷收不收违约金，要看你的贷款合同。有的银行规定贷款满一年后提前还款不收违约金，也有银行要收一到三个月的"
          "利息作为违约金。最准确的办法是打电话问一下放贷的银行，顺便预约提前还款的时间。")],
        [("信用卡账单分期划算吗？",
          "信用卡账单分期通常不划算。分期手续费看起来每期只有百分之零点六左右，但手续费是按全部本金计算的，"
          "而你欠的本金每个月都在减少，折算成实际年化利率大约在百分之十三以上，比很多贷款都贵。"),
         ("那最低还款呢？",
          "信用卡最低还款不算逾期，不影响征信，但代价不小：没还的部分会从每笔消费的记账日开始按每天万分之五计息，"
          "而且是按月计复利，折算成年化利率在百分之十八左右，比账单分期还贵。"),
         ("有没有更好的办法？",
          "能全额还信用卡就全额还。实在周转不开，可以比较一下银行的低息消费贷，用利率更低的贷款先还掉信用卡欠款；"
          "或者只把一小部分账单分期，其余全额还款，尽快把这笔高息的信用卡欠款还清。")],
    ],
    "健康": [
        [("最近总是失眠，躺下一两个小时都睡不着，怎么办？",
          "入睡困难是很常见的失眠类型。可以先从作息入手：每天固定时间起床，白天不补觉，睡前一小时不看手机、"
          "不处理工作。如果躺下二十分钟还睡不着，就起床到别的房间做点放松的事，比如看书，等有困意了再回床上睡。"),
         ("睡前喝点牛奶有用吗？",
          "睡前喝一杯温牛奶，有些人觉得更容易入睡，但效果因人而异，并不能治疗失眠。对睡眠影响更大的是下午和晚上别喝"
          "浓茶、咖啡，也不要靠喝酒助眠，酒精会让后半夜的睡眠变浅、容易醒。"),
         ("吃褪黑素可以吗？",
          "褪黑素对倒时差、调整作息这类短期的睡眠问题有帮助，可以小剂量用一段时间。但如果失眠已经持续几个月，"
          "不建议自己长期吃褪黑素或者安眠药，最好去医院的睡眠门诊，找到失眠的原因再治疗。")],
        [("久坐办公脖子和肩膀特别酸，有什么缓解的方法？",
          "长时间坐着办公，脖子和肩膀的肌肉一直处在紧张状态，所以会酸痛。先调整工位：把显示器调到眼睛平视的高度，"
          "椅子要能支撑腰背。每坐四十五分钟左右起来活动一下，做做收下巴、耸肩和扩胸的动作，能明显缓解颈肩酸痛。"),
         ("有没有推荐的拉伸动作？",
          "针对颈肩酸痛，可以做这几个拉伸：一是颈部侧屈拉伸，坐直后右手放在头的左侧，轻轻把头往右肩方向拉，"
          "保持二十秒再换边；二是双手在背后交握，向后向下伸展，打开胸口和肩膀。每天做几组，动作要慢，拉到有牵拉感就行。"),
         ("手指发麻也是颈椎的问题吗？",
          "手指发麻有可能跟颈椎有关，比如颈椎间盘突出压迫了神经，久坐低头的人比较常见；也可能是手腕的腕管综合征。"
          "如果手指麻木一直不好，或者越来越严重，伴有手没力气，要及时去医院骨科或者神经内科做检查。")],
        [("想减脂，跑步和跳绳哪个效果好？",
          "跑步和跳绳都是很好的减脂运动，关键是总的热量消耗和能不能坚持。跳绳单位时间消耗的热量更高，但对膝盖和脚踝的"
          "冲击比较大；体重基数比较大的人，建议先从快走和慢跑开始，等体重降下来再加跳绳。"),
         ("每次要跑多久才开始燃烧脂肪？",
          "“跑满三十分钟才开始燃烧脂肪”是个误区，身体在运动中一直都在同时消耗糖和脂肪。减脂看的是一段时间里的总消耗，"
          "每周累计一百五十分钟左右中等强度的跑步或其他有氧运动就很好，每次跑二十分钟也有效。"),
         ("饮食上要注意什么？",
          "减脂主要靠饮食制造热量缺口，光靠跑步很难抵消吃多的部分。少喝含糖饮料、少吃油炸食品和零食，"
          "每餐保证有足够的蛋白质和蔬菜，主食适量换成粗粮，但不建议完全不吃主食，否则很难坚持，也容易反弹。")],
    ],
    "学习": [
        [("考研英语阅读总是错很多，怎么提高？",
          "考研英语阅读错得多，通常是两个原因：长难句读不懂，或者被干扰选项骗了。建议把历年真题的阅读文章逐句精读，"
          "把长难句的结构拆开弄懂；做完题后逐题分析错因，看是没读懂原文，还是选项和原文对应的方式没掌握。"),
         ("单词要背到什么程度？",
          "考研英语大纲词汇大约五千五百个，至少要做到看到单词就能反应出意思，不要求都会拼写。背单词最好结合真题阅读里的"
          "原句，一词多义和熟词僻义要特别注意，这些词在考研阅读题里经常考。"),
         ("真题要做几遍？",
          "考研英语近十几年的真题至少做两遍：第一遍按考试时间限时做，了解自己的水平；第二遍精读文章，总结出题规律和"
          "干扰项的套路。考前一个月再把做错的真题重新看一遍，比盲目刷模拟题效果好。")],
        [("孩子五岁，适合开始学钢琴吗？",
          "五岁的孩子可以开始学钢琴，但要看孩子的兴趣、专注力和手指力量。可以先带孩子上几节钢琴体验课，"
          "如果孩子能坐得住二三十分钟、也愿意练琴，再正式报班，不要一开始就逼得太紧。"),
         ("每天要练多长时间？",
          "刚开始学钢琴，每天练十五到二十分钟就够了，重要的是每天都练，养成习惯。家长最好陪孩子一起练，"
          "按老师布置的要求把当天的曲子弹熟，等孩子大一点、曲子难一点，再慢慢增加练琴时间。"),
         ("要不要买钢琴，还是先用电钢琴？",
          "学琴入门阶段可以先用电钢琴，但一定要选有配重键盘、八十八键的，手感接近真钢琴，价格也便宜，还能戴耳机，不吵邻居。"
          "孩子学了一两年，确定能坚持下去，再换一台声学钢琴。")],
        [("雅思口语一直卡在五分半，怎么突破？",
          "雅思口语卡在五分半，常见问题是回答太短、停顿多、用词重复。建议把自己练习的回答录下来回听，找出停顿、"
          "语法错误和重复的词；再按常考话题准备自己的素材，练习把每个回答展开两三句，说得更流利、更具体。"),
         ("Part 2 的两分钟总是说不满怎么办？",
          "雅思口语 Part 2 说不满两分钟，多半是准备时间没用好。拿到题卡后用那一分钟写关键词，按时间、地点、人物、"
          "经过和感受的顺序展开，每一点都举一个具体的例子或细节，这样很容易就能说满两分钟。"),
         ("要不要背模板？",
          "不建议背整段的雅思口语模板，考官听得出背诵的内容，反而会影响分数，甚至会被打断追问。可以积累一些自然的连接词"
          "和表达，用在自己真实的经历里，说出来更自然，考官也更认可。")],
    ],
    "宠物": [
        [("小猫什么时候打疫苗？",
          "小猫一般在八到九周大的时候打第一针猫三联疫苗，之后每隔三到四周打一针，一共打三针；猫三联打完后，"
          "再打一针狂犬疫苗。打疫苗前要确认小猫精神、食欲都正常，最好先驱虫。"),
         ("打完疫苗可以洗澡吗？",
          "小猫打完疫苗后不要马上洗澡，最好等最后一针疫苗打完一到两周再洗，免得着凉感冒、影响疫苗的免疫效果。"
          "这段时间如果小猫身上脏了，可以用湿毛巾或者宠物湿巾局部擦一擦。"),
         ("以后每年都要打吗？",
          "猫咪成年以后，猫三联和狂犬疫苗一般每年加强一次。也可以每年先去宠物医院测一下抗体，如果抗体水平足够，"
          "猫三联可以推迟加强，但狂犬疫苗还是建议按规定每年打。")],
        [("家里的金毛掉毛特别厉害，正常吗？",
          "金毛是双层被毛的狗狗，春秋换毛季节掉毛特别多是正常的，底层的绒毛会成片脱落。但如果出现一块一块的脱毛、"
          "皮肤发红、有皮屑，或者狗狗一直挠痒，就要带它去宠物医院看看是不是皮肤病。"),
         ("有什么办法能减少掉毛？",
          "最有效的办法是每天给金毛梳毛，先用针梳把脱落的底毛梳出来，再用排梳梳顺，梳掉的毛就不会掉得满屋都是。"
          "饮食上可以补充含鱼油的营养品，让毛发和皮肤更健康，掉毛也会少一些。"),
         ("多久给它洗一次澡？",
          "金毛一般两到三周洗一次澡就够了，洗得太勤会破坏皮肤表面的油脂层，反而容易得皮肤病、掉毛更多。"
          "洗完澡一定要用吹水机把底层的毛彻底吹干，底毛没干透很容易得湿疹。")],
        [("仓鼠笼子多大合适？",
          "仓鼠笼子的底面积至少要八十乘五十厘米，越大越好。很多宠物店卖的小笼子其实太小，仓鼠在小笼子里容易焦虑，"
          "会出现一直啃笼子、不停转圈这些刻板行为。"),
         ("垫料用什么比较好？",
          "仓鼠的垫料推荐用无尘的纸棉或者白杨木木屑，在笼子里铺十五厘米以上，让仓鼠能打洞、做窝。"
          "不要用松木屑和杉木屑，里面的芳香油对仓鼠的呼吸道有刺激。"),
         ("需要给它放跑轮吗？",
          "需要，跑轮是仓鼠在笼子里最主要的运动方式，仓鼠晚上会跑好几公里。跑轮的大小很重要：金丝熊要选直径二十八厘米以上的，"
          "仓鼠跑的时候背不能弯；跑道要选实心的，不要网格的，免得卡脚。")],
    ],
    "数码": [
        [("手机用了两年，电池掉电特别快，要换电池吗？",
          "手机用两年后电池老化、掉电变快是很正常的。可以先在设置里查看电池健康度，如果已经低于百分之八十，"
          "换一块新电池续航就能明显改善，花费比换新手机少得多。"),
         ("去官方换还是第三方店换？",
          "去官方售后换手机电池价格贵一些，但电池品质有保证，换完后手机的防水密封也会重新处理。第三方维修店便宜，"
          "但电池质量参差不齐，有的手机换完还会提示“非原装电池”，看不到电池健康度。"),
         ("平时怎么充电能让电池用得久一点？",
          "想让手机电池寿命长一些，尽量别等电量耗尽再充电，电量保持在百分之二十到八十之间最好；"
          "也别边充电边玩大型游戏，充电时发烫对电池伤害很大。另外，夏天别把手机放在车里暴晒。")],
        [("家里的 WiFi 网速特别慢，怎么排查？",
          "排查家里网速慢，先用网线把电脑直接连到路由器或者光猫上测速。如果网线测速也很慢，就是宽带本身的问题，"
          "要联系运营商；如果网线测速正常、只有 WiFi 慢，问题就出在路由器或者无线信号上。"),
         ("网线测速是正常的，卧室信号很差。",
          "那就是无线信号覆盖的问题。可以先把路由器挪到房子中间、放高一点，避开承重墙、鱼缸和微波炉，这些都会削弱 WiFi 信号。"
          "如果房子比较大，卧室隔了好几堵墙，买一套 Mesh 路由器组网，覆盖效果最好。"),
         ("2.4G 和 5G 该连哪个？",
          "双频路由器的 5G 频段速度快、干扰少，但穿墙能力弱，适合离路由器近、隔墙少的房间；2.4G 频段速度慢一些，"
          "但传得远、穿墙能力强。卧室信号差的话，可以先试试连 2.4G 的 WiFi。")],
        [("空调开了半天也不凉，是缺氟了吗？",
          "空调不制冷不一定是缺氟。先检查几个简单的原因：过滤网是不是积了很多灰，滤网堵了风量变小，制冷效果就会很差；"
          "再看室外机周围有没有杂物、散热好不好，还有遥控器是不是设成了制冷模式。"),
         ("滤网怎么清洗？",
          "清洗空调滤网前先断电，打开室内机的面板，把滤网向上取出来。用清水从滤网的背面往正面冲，灰尘更容易冲掉；"
          "脏得厉害可以用中性洗涤剂和软毛刷轻轻刷，然后放在阴凉处晾干再装回去，不要暴晒。"),
         ("洗了还是不凉呢？",
          "滤网洗干净了空调还是不凉，可以开制冷十几分钟后看看室外机：如果粗管上结霜，或者摸着粗管一点都不凉，"
          "很可能是空调缺氟或者漏氟了。这时候要请专业的空调师傅上门检测，找到漏点补焊后再加氟。")],
    ],
}


LANGS = {"en": EN, "zh": ZH}


def _record(rid: str, exchanges: Dialogue) -> dict[str, Any]:
    messages = [{"role": role, "content": text} for user, reply in exchanges
                for role, text in (("user", user), ("assistant", reply))]
    return {"id": rid, "messages": messages, "tools": None, "task_type": "chat", "source": "planted", "meta": {}}


def planted(lang: str) -> tuple[list[dict[str, Any]], set[str]]:
    """(coherent + spliced records of one language, ids of the spliced ones)."""
    coherent, spliced = [], []
    for family, dialogues in LANGS[lang].items():
        for i, dialogue in enumerate(dialogues):
            coherent.append(_record(f"{lang}-{family}-{i}", dialogue))
            donor = dialogues[(i + 1) % len(dialogues)]
            spliced.append(_record(f"{lang}-{family}-{i}-spliced", dialogue[:1] + donor[1:]))
    return coherent + spliced, {r["id"] for r in spliced}
