// Fills a card template with data, as Drone's UI does before rendering: adaptivecards-templating's Template.expand
// with the data as $root. Usage: node expand.js TEMPLATE.json < DATA.json > CARD.json
// (Node, not the page: adaptive-expressions' browser build expects a bundler such as the one Drone's UI is built with.)
"use strict";
const fs = require("fs");
const ACData = require("adaptivecards-templating");

const template = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const data = JSON.parse(fs.readFileSync(0, "utf8"));
const card = new ACData.Template(template).expand({ $root: data });
process.stdout.write(JSON.stringify(card, null, 2) + "\n");
